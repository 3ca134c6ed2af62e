"""The control plane on the embedded store: revisions, history, rollback, invalid changes."""

from pathlib import Path

import pytest

from gateway.control import ControlPlane, EmbeddedStore
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.routing import RoutingState, RoutingTable, Shadow

VARIANTS = {"iris": {"blue", "green", "mlp"}}


async def plane(data: Path) -> ControlPlane:
    control = ControlPlane(EmbeddedStore(data), RoutingTable({}), lambda model: VARIANTS[model])
    await control.start({"iris": RoutingState("blue", sticky_header="x-user-id")})
    return control


async def test_changes_make_growing_revisions_and_complete_history(tmp_path: Path) -> None:
    """Each change is a new revision with its action; history lists all of them, oldest first."""
    control = await plane(tmp_path)
    await control.set_canary("iris", "green", 0.05)
    await control.set_canary("iris", "green", 0.25)
    await control.promote("iris")
    await control.flip("iris", "blue")
    await control.set_shadows("iris", [Shadow("mlp", 0.5)])
    history = await control.history("iris")
    assert [e.revision for e in history] == [1, 2, 3, 4, 5, 6]
    assert [e.action for e in history] == [
        "init",
        "canary green 0.05",
        "canary green 0.25",
        "promote",
        "flip blue",
        "shadows mlp",
    ]
    assert history[3].state.live == "green" and history[3].state.canary is None
    assert control.table.get("iris") == history[-1].state


async def test_rollback_previous_and_to_revision(tmp_path: Path) -> None:
    """Bare rollback restores revision current-1; a second one undoes it; to_revision restores n."""
    control = await plane(tmp_path)
    await control.flip("iris", "green")  # 2
    first = await control.rollback("iris")  # 3 = state of 1
    assert (first.revision, first.live) == (3, "blue")
    second = await control.rollback("iris")  # 4 = state of 2
    assert (second.revision, second.live) == (4, "green")
    named = await control.rollback("iris", 1)
    assert (named.revision, named.live) == (5, "blue")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c: c.set_canary("iris", "nope", 0.1), NotFound, "no variant 'nope'"),
        (lambda c: c.set_canary("iris", "green", 1.5), BadRequest, "between 0 and 1"),
        (lambda c: c.set_canary("iris", "green", -0.1), BadRequest, "between 0 and 1"),
        (lambda c: c.set_canary("iris", "blue", 0.1), Conflict, "live already"),
        (lambda c: c.promote("iris"), Conflict, "no canary to promote"),
        (lambda c: c.abort_canary("iris"), Conflict, "no canary to abort"),
        (lambda c: c.flip("iris", "blue"), Conflict, "live already"),
        (lambda c: c.flip("iris", "nope"), NotFound, "no variant"),
        (lambda c: c.flip("other", "blue"), NotFound, "unknown model 'other'"),
        (lambda c: c.set_shadows("iris", [Shadow("mlp", 2.0)]), BadRequest, "between 0 and 1"),
        (
            lambda c: c.set_shadows("iris", [Shadow("mlp", 1.0), Shadow("mlp", 0.5)]),
            BadRequest,
            "only once",
        ),
        (lambda c: c.rollback("iris"), Conflict, "no earlier revision"),
        (lambda c: c.rollback("iris", 9), NotFound, "no revision 9"),
        (lambda c: c.rollback("iris", 1), Conflict, "current revision already"),
    ],
)
async def test_invalid_changes_change_nothing(
    tmp_path: Path, change, error: type[Exception], message: str
) -> None:  # type: ignore[no-untyped-def]
    """Every invalid change raises the contract's error and leaves state and history alone."""
    control = await plane(tmp_path)
    before = await control.history("iris")
    with pytest.raises(error, match=message):
        await change(control)
    assert await control.history("iris") == before
    assert control.table.get("iris").revision == 1


async def test_restart_keeps_routing_and_history(tmp_path: Path) -> None:
    """A new control plane on the same data_dir serves the last state, not the config's."""
    control = await plane(tmp_path)
    await control.set_canary("iris", "green", 0.3)
    await control.flip("iris", "mlp")
    again = await plane(tmp_path)
    assert again.table.get("iris") == control.table.get("iris")
    assert again.table.get("iris").revision == 3
    assert len(await again.history("iris")) == 3


async def test_stale_append_is_refused(tmp_path: Path) -> None:
    """Two writers cannot both make revision n+1: the store compares and sets."""
    control = await plane(tmp_path)
    other = await plane(tmp_path)
    await control.flip("iris", "green")
    entry = (await other.history("iris"))[0]
    with pytest.raises(Conflict, match="changed meanwhile"):
        await other.store.append("iris", entry, expected=1)
