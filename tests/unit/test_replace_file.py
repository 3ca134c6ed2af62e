"""Files under data_dir replaced whole, by several writers at once (gateway.files)."""

import threading
from pathlib import Path

import pytest

from gateway.files import replace_file


def test_writers_of_one_file_never_trip_over_each_other(tmp_path: Path) -> None:
    """Eight writers replacing the same file 100 times each (as workers, or `gateway batch`
    beside `gateway serve`, sharing a data_dir): no write fails, the file always holds one
    whole write, and no temporary file is left behind."""
    target = tmp_path / "routing" / "iris.json"
    writes = {bytes([65 + writer]) * (1000 + writer) for writer in range(8)}
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(100):
                replace_file(target, data, durable=False)
                assert target.read_bytes() in writes
        except BaseException as exc:  # reported below, from the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(data,)) for data in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in writes
    assert [path.name for path in target.parent.iterdir()] == ["iris.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A write that cannot finish (here: the target is a directory) raises and changes
    nothing else."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "kept.json").write_bytes(b"old")
    with pytest.raises(OSError):
        replace_file(tmp_path / "taken", b"new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.json", "taken"]
