"""Files the gateway keeps under `data_dir`, replaced whole."""

import os
import tempfile
from pathlib import Path


def replace_file(target: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `target` at once: readers see the old file or the new one, never a part.

    The data goes to a temporary file of a name of its own in the same directory, then is
    renamed over `target` (rename(2) replaces atomically within a file system). Several
    processes may write the same file (workers, or `gateway batch` beside `gateway serve`,
    sharing a `data_dir`): a temporary name shared by all, as `target.json.tmp` was, let one
    process rename another's file away, and the other's rename then failed (ENOENT). With
    `durable`, the data reaches the disk before the rename (fsync), so that a crash leaves the
    old file or the new one. Raises OSError as the file system does; the temporary file is
    removed then.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
