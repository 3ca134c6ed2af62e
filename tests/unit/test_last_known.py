"""The last-known routing file: atomic, shared between processes, never going backwards."""

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from gateway.control import ControlPlane, EmbeddedStore, HistoryEntry, LastKnownRouting
from gateway.routing import Canary, RoutingState, RoutingTable

VARIANTS = {"iris": {"blue", "green", "mlp"}}


def entry(revision: int, live: str = "blue") -> HistoryEntry:
    return HistoryEntry.new(f"flip {live}", RoutingState(live, revision=revision))


def test_save_and_load_the_head_entry(tmp_path: Path) -> None:
    """The file holds the whole head entry (revision, action, time, state) and names the model."""
    memory = LastKnownRouting(tmp_path / "last-known")
    assert memory.load("iris") is None
    head = HistoryEntry.new(
        "canary mlp 0.5", RoutingState("green", Canary("mlp", 0.5), None, (), 7)
    )
    assert memory.save("iris", head)
    assert memory.load("iris") == head
    assert orjson.loads(memory.file("iris").read_bytes())["model"] == "iris"
    assert sorted(p.name for p in memory.directory.iterdir()) == [".lock", "iris.json"]


def test_never_goes_backwards(tmp_path: Path) -> None:
    """An older or equal revision leaves the newer file as it is."""
    memory = LastKnownRouting(tmp_path)
    green = entry(5, "green")
    assert memory.save("iris", green)
    assert not memory.save("iris", entry(3, "mlp"))
    assert not memory.save("iris", entry(5, "mlp"))
    assert memory.load("iris") == green
    assert memory.save("iris", entry(6, "blue"))
    loaded = memory.load("iris")
    assert loaded is not None and (loaded.revision, loaded.state.live) == (6, "blue")


def test_writers_racing_end_at_the_newest_and_readers_never_see_a_torn_file(
    tmp_path: Path,
) -> None:
    """Eight writers (separate handles, as separate workers have) save 200 revisions in random
    order; a reader meanwhile only ever sees whole files whose revision never decreases."""
    revisions = list(range(1, 201))
    random.Random(4).shuffle(revisions)
    memory = LastKnownRouting(tmp_path)
    seen: list[int | None] = []  # None: no whole file to read after one was there
    done = threading.Event()

    def read() -> None:
        reader = LastKnownRouting(tmp_path)
        while not done.is_set():
            loaded = reader.load("iris")  # a torn file would warn and give None
            if seen or loaded is not None:
                seen.append(None if loaded is None else loaded.revision)

    watcher = threading.Thread(target=read)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: LastKnownRouting(tmp_path).save("iris", entry(r)), revisions))
    finally:
        done.set()
        watcher.join()
    whole = [revision for revision in seen if revision is not None]
    assert seen and whole == seen and whole == sorted(whole)
    loaded = memory.load("iris")
    assert loaded is not None and loaded.revision == 200


def test_an_unreadable_file_is_no_last_known_state_and_gets_replaced(tmp_path: Path) -> None:
    """A damaged file is ignored when loading and overwritten by the next save."""
    memory = LastKnownRouting(tmp_path)
    memory.file("iris").write_bytes(b'{"revision": 9, "act')
    assert memory.load("iris") is None
    assert memory.save("iris", entry(2))
    loaded = memory.load("iris")
    assert loaded is not None and loaded.revision == 2


async def test_remember_writes_the_newest_in_a_thread_and_close_waits(tmp_path: Path) -> None:
    """Installs in quick succession end with the newest on disk once close() returns."""
    memory = LastKnownRouting(tmp_path)
    for revision in range(1, 6):
        memory.remember("iris", entry(revision))
    await memory.close()
    loaded = memory.load("iris")
    assert loaded is not None and loaded.revision == 5


async def test_control_plane_remembers_every_installed_revision(tmp_path: Path) -> None:
    """Adopting and changing routing keeps the current head entry in the last-known file."""
    memory = LastKnownRouting(tmp_path / "last-known")
    control = ControlPlane(
        EmbeddedStore(tmp_path / "routing"), RoutingTable({}), VARIANTS.__getitem__,
        last_known=memory,
    )  # fmt: skip
    await control.start({"iris": RoutingState("blue")})
    await control.flip("iris", "green")
    await control.rollback("iris")
    await control.stop()
    history = await control.history("iris")
    assert memory.load("iris") == history[-1] and history[-1].state.live == "blue"


async def test_recall_skips_a_state_naming_removed_variants(tmp_path: Path) -> None:
    """A last-known state routing to a variant the config no longer has is not served."""
    memory = LastKnownRouting(tmp_path)
    memory.save("iris", HistoryEntry.new("flip old", RoutingState("old", revision=4)))
    control = ControlPlane(
        EmbeddedStore(tmp_path / "routing"), RoutingTable({}), VARIANTS.__getitem__,
        last_known=memory,
    )  # fmt: skip
    assert control.recall("iris") is None
    memory.save("iris", entry(5, "green"))
    recalled = control.recall("iris")
    assert recalled is not None and recalled.state.live == "green"


async def test_confirm_puts_the_served_head_into_an_empty_store(tmp_path: Path) -> None:
    """A store that lost its data gets the last-known head back, revision and all, and a
    store that has routing installs it when newer."""
    store = EmbeddedStore(tmp_path / "routing")
    control = ControlPlane(store, RoutingTable({}), VARIANTS.__getitem__)
    served = entry(4, "green")
    control.install("iris", served)
    assert await control.confirm("iris", served) == served
    assert await store.history("iris") == [served]
    newer = entry(5, "mlp")
    await store.append("iris", newer, expected=4)
    assert await control.confirm("iris", served) == newer
    assert control.table.get("iris").live == "mlp"
