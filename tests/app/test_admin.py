"""The admin API in-process (embedded store): auth, every change, refusals, reload, fuzzing."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from app.conftest import AppClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ADMIN, iris_body


async def state(client: httpx.AsyncClient, model: str = "iris") -> dict[str, Any]:
    response = await client.get(f"/admin/models/{model}", headers=ADMIN)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "secret"}, 401),
        ({"Authorization": "Basic secret"}, 401),
        (ADMIN, 200),
    ],
)
async def test_token_is_required(
    client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    """A missing or wrong bearer token is 401 on reads and changes; the right one works."""
    assert (await client.get("/admin/models", headers=headers)).status_code == status
    flip = await client.post("/admin/models/iris/flip", json={"to": "green"}, headers=headers)
    assert flip.status_code == status
    if status == 401:
        assert "token" in flip.json()["error"]
        assert (await state(client))["live"] == "blue"


async def test_state_shape(client: httpx.AsyncClient) -> None:
    """Routing state has exactly the contract's fields, for one model and for all."""
    one = await state(client)
    assert set(one) == {
        "model",
        "revision",
        "live",
        "canary",
        "sticky_header",
        "shadows",
        "variants",
    }
    assert (
        one["model"] == "iris"
        and one["revision"] == 1
        and one["live"] == "blue"
        and one["canary"] is None
    )
    assert one["sticky_header"] == "x-user-id" and one["shadows"] == []
    assert set(one["variants"]) == {"blue", "green", "mlp", "slow", "failing"}
    every = (await client.get("/admin/models", headers=ADMIN)).json()
    assert [s["model"] for s in every] == ["iris", "mlp"]


async def test_canary_promote_flip_rollback_flow(client: httpx.AsyncClient) -> None:
    """A full rollout: canary, ramp, promote, flip, rollbacks; revisions grow; traffic follows."""
    put = await client.put(
        "/admin/models/iris/canary", json={"variant": "green", "weight": 1.0}, headers=ADMIN
    )
    assert (
        put.status_code == 200
        and put.json()["canary"] == {"variant": "green", "weight": 1.0}
        and put.json()["revision"] == 2
    )
    served = await client.post("/v2/models/iris/infer", json=iris_body())
    assert (
        served.headers["x-gateway-variant"] == "green"
        and served.headers["x-gateway-role"] == "canary"
    )
    assert served.headers["x-gateway-revision"] == "2"
    promoted = (await client.post("/admin/models/iris/promote", headers=ADMIN)).json()
    assert promoted["live"] == "green" and promoted["canary"] is None and promoted["revision"] == 3
    flipped = (
        await client.post("/admin/models/iris/flip", json={"to": "mlp"}, headers=ADMIN)
    ).json()
    assert flipped["live"] == "mlp" and flipped["revision"] == 4
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).headers[
        "x-gateway-variant"
    ] == "mlp"
    back = (await client.post("/admin/models/iris/rollback", headers=ADMIN)).json()
    assert back["live"] == "green" and back["revision"] == 5
    again = (await client.post("/admin/models/iris/rollback", headers=ADMIN)).json()
    assert again["live"] == "mlp" and again["revision"] == 6
    named = (
        await client.post("/admin/models/iris/rollback", json={"to_revision": 1}, headers=ADMIN)
    ).json()
    assert named["live"] == "blue" and named["canary"] is None and named["revision"] == 7
    history = (await client.get("/admin/models/iris/history", headers=ADMIN)).json()
    assert [h["revision"] for h in history] == [1, 2, 3, 4, 5, 6, 7]
    assert [h["action"].split()[0] for h in history] == [
        "init",
        "canary",
        "promote",
        "flip",
        "rollback",
        "rollback",
        "rollback",
    ]
    assert all(set(h) == {"revision", "action", "time", "state"} for h in history)
    assert history[3]["state"]["live"] == "mlp"


async def test_abort_and_shadows(client: httpx.AsyncClient) -> None:
    """DELETE canary removes it; PUT shadows replaces the set (empty list clears it)."""
    await client.put(
        "/admin/models/iris/canary", json={"variant": "green", "weight": 0.5}, headers=ADMIN
    )
    aborted = await client.delete("/admin/models/iris/canary", headers=ADMIN)
    assert aborted.status_code == 200 and aborted.json()["canary"] is None
    shadows = await client.put(
        "/admin/models/iris/shadows",
        json=[{"variant": "mlp", "sample": 0.5}, {"variant": "green"}],
        headers=ADMIN,
    )
    assert shadows.json()["shadows"] == [
        {"variant": "mlp", "sample": 0.5},
        {"variant": "green", "sample": 1.0},
    ]
    cleared = await client.put("/admin/models/iris/shadows", json=[], headers=ADMIN)
    assert cleared.json()["shadows"] == []


INVALID = [
    ("PUT", "/admin/models/iris/canary", {"variant": "nope", "weight": 0.1}, 404),
    ("PUT", "/admin/models/iris/canary", {"variant": "green", "weight": 1.5}, 400),
    ("PUT", "/admin/models/iris/canary", {"variant": "green", "weight": -0.5}, 400),
    ("PUT", "/admin/models/iris/canary", {"variant": "blue", "weight": 0.1}, 409),
    ("PUT", "/admin/models/iris/canary", {"variant": "green"}, 400),
    ("PUT", "/admin/models/iris/canary", {"variant": "green", "weight": "lots"}, 400),
    ("PUT", "/admin/models/iris/canary", {"variant": "green", "weight": 0.1, "extra": 1}, 400),
    ("PUT", "/admin/models/iris/canary", [1, 2], 400),
    ("PUT", "/admin/models/iris/canary", b"{not json", 400),
    ("PUT", "/admin/models/nope/canary", {"variant": "green", "weight": 0.1}, 404),
    ("DELETE", "/admin/models/iris/canary", None, 409),
    ("POST", "/admin/models/iris/promote", None, 409),
    ("POST", "/admin/models/iris/flip", {"to": "blue"}, 409),
    ("POST", "/admin/models/iris/flip", {"to": "nope"}, 404),
    ("POST", "/admin/models/iris/flip", {}, 400),
    ("POST", "/admin/models/iris/flip", None, 400),
    ("PUT", "/admin/models/iris/shadows", [{"variant": "nope"}], 404),
    ("PUT", "/admin/models/iris/shadows", [{"variant": "mlp", "sample": 2}], 400),
    ("PUT", "/admin/models/iris/shadows", {"variant": "mlp"}, 400),
    ("PUT", "/admin/models/iris/shadows", [{"variant": "mlp"}, {"variant": "mlp"}], 400),
    ("POST", "/admin/models/iris/rollback", None, 409),
    ("POST", "/admin/models/iris/rollback", {"to_revision": 1}, 409),
    ("POST", "/admin/models/iris/rollback", {"to_revision": 99}, 404),
    ("POST", "/admin/models/iris/rollback", {"to_revision": "one"}, 400),
    ("GET", "/admin/models/nope", None, 404),
    ("GET", "/admin/models/nope/history", None, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), INVALID)
async def test_invalid_changes_are_refused_and_change_nothing(
    client: httpx.AsyncClient, method: str, path: str, body: object, status: int
) -> None:
    """Each invalid change gets the contract's code with a message; state and history stay."""
    before = await state(client)
    content = (
        body
        if isinstance(body, bytes)
        else (None if body is None else httpx.Request("GET", "/", json=body).content)
    )
    response = await client.request(method, path, content=content, headers=ADMIN)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert await state(client) == before
    assert len((await client.get("/admin/models/iris/history", headers=ADMIN)).json()) == 1


async def test_reload_adds_variants_and_refuses_bad_configs(
    make_client: AppClient, tmp_path: Path
) -> None:
    """Reload loads a new variant (then routable); a broken config or a dropped live variant is 409."""
    client = await make_client()
    config_path = tmp_path / "gateway.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["models"]["iris"]["variants"]["teal"] = {"path": "iris/3/model.onnx"}
    config_path.write_text(yaml.safe_dump(config))
    reloaded = await client.post("/admin/reload", headers=ADMIN)
    assert reloaded.status_code == 200
    assert "teal" in (await state(client))["variants"]
    assert (
        await client.post("/v2/models/iris/versions/teal/infer", json=iris_body())
    ).status_code == 200
    flip = await client.post("/admin/models/iris/flip", json={"to": "teal"}, headers=ADMIN)
    assert flip.status_code == 200
    del config["models"]["iris"]["variants"]["teal"]
    config_path.write_text(yaml.safe_dump(config))
    dropped = await client.post("/admin/reload", headers=ADMIN)
    assert (
        dropped.status_code == 409 and "drops a variant its routing uses" in dropped.json()["error"]
    )
    config["models"]["iris"]["variants"]["teal"] = {"path": "iris/9/model.onnx"}
    config_path.write_text(yaml.safe_dump(config))
    missing = await client.post("/admin/reload", headers=ADMIN)
    assert missing.status_code == 409 and "no ONNX file" in missing.json()["error"]
    config_path.write_text("models: [")
    broken = await client.post("/admin/reload", headers=ADMIN)
    assert broken.status_code == 409 and "not valid YAML" in broken.json()["error"]
    assert (await state(client))["live"] == "teal"
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).headers[
        "x-gateway-variant"
    ] == "teal"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["variant", "weight", "to", "sample", "to_revision", "x"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=6,
)
ADMIN_ROUTES = [
    ("PUT", "/admin/models/{m}/canary"), ("DELETE", "/admin/models/{m}/canary"),
    ("POST", "/admin/models/{m}/promote"), ("POST", "/admin/models/{m}/flip"),
    ("PUT", "/admin/models/{m}/shadows"), ("POST", "/admin/models/{m}/rollback"),
    ("GET", "/admin/models/{m}"), ("GET", "/admin/models/{m}/history"),
]  # fmt: skip


async def test_fuzzed_admin_calls_never_fail_with_500(client: httpx.AsyncClient) -> None:
    """Random bodies, models and variants on every admin route: never a 500, data plane unharmed."""

    @settings(
        max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        st.sampled_from(ADMIN_ROUTES),
        st.sampled_from(["iris", "mlp", "nope", "ir%20is"]),
        json_values | st.binary(max_size=20),
    )
    def fuzz(route: tuple[str, str], model: str, body: object) -> None:
        method, path = route
        content = body if isinstance(body, bytes) else httpx.Request("GET", "/", json=body).content
        calls.append((method, path.format(m=model), content))

    calls: list[tuple[str, str, bytes]] = []
    fuzz()
    for method, path, content in calls:
        response = await client.request(method, path, content=content, headers=ADMIN)
        assert response.status_code < 500, (method, path, content, response.text)
        assert "error" in response.json() or response.status_code == 200
    assert (await client.post("/v2/models/iris/infer", json=iris_body())).status_code == 200


# Each admin body field with values of the wrong JSON type (and NaN for the numbers).
NOT_STRINGS = [True, False, None, [0.3], {"v": 1}]
CONFUSED = [*NOT_STRINGS, "0.3", "1"]
TYPED_BODIES = [
    (
        "PUT",
        "/admin/models/iris/canary",
        {"variant": "green", "weight": 0.3},
        "weight",
        [*CONFUSED, float("nan")],
    ),
    (
        "PUT",
        "/admin/models/iris/canary",
        {"variant": "green", "weight": 0.3},
        "variant",
        [*NOT_STRINGS, 1],
    ),
    ("POST", "/admin/models/iris/flip", {"to": "green"}, "to", [*NOT_STRINGS, 1]),
    (
        "PUT",
        "/admin/models/iris/shadows",
        [{"variant": "mlp", "sample": 0.5}],
        "sample",
        [*CONFUSED, float("inf")],
    ),
    (
        "PUT",
        "/admin/models/iris/shadows",
        [{"variant": "mlp", "sample": 0.5}],
        "variant",
        [*NOT_STRINGS, 2],
    ),
    (
        "POST",
        "/admin/models/iris/rollback",
        {"to_revision": 1},
        "to_revision",
        [True, "1", 1.0, [1], {"r": 1}],
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "good", "field", "bad"),
    [(m, p, g, f, b) for m, p, g, f, values in TYPED_BODIES for b in values],
)
async def test_type_confused_admin_bodies_are_refused(
    client: httpx.AsyncClient, method: str, path: str, good: Any, field: str, bad: object
) -> None:
    """A bool or a string is never a number, a float never a revision: 400 naming the field, nothing changed."""
    await client.put(
        "/admin/models/iris/canary", json={"variant": "green", "weight": 0.1}, headers=ADMIN
    )
    before = (await client.get("/admin/models/iris", headers=ADMIN)).json()
    body = [{**good[0], field: bad}] if isinstance(good, list) else {**good, field: bad}
    content = json.dumps(body).encode()  # json writes NaN and Infinity literals, which we read
    response = await client.request(method, path, content=content, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert (await client.get("/admin/models/iris", headers=ADMIN)).json() == before
