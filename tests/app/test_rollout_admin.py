"""The rollout admin API in-process (embedded store): the verbs, their refusals, the history."""

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from app.conftest import AppClient
from support import ADMIN, iris_body, wait_until_async

PLAN: dict[str, Any] = {
    "variant": "green",
    "steps": [{"shadow": 1.0, "duration": "1h"}, {"canary": 0.2, "duration": "1h"},
              {"pause": True}, {"canary": 0.5, "duration": "1h"}],
}  # fmt: skip
ROLLOUT = "/admin/models/iris/rollout"


async def routing(client: httpx.AsyncClient) -> dict[str, Any]:
    answer: dict[str, Any] = (await client.get("/admin/models/iris", headers=ADMIN)).json()
    return answer


async def act(client: httpx.AsyncClient, verb: str, body: Any = None) -> httpx.Response:
    return await client.post(f"{ROLLOUT}/{verb}", json=body, headers=ADMIN)


async def started(client: httpx.AsyncClient, plan: dict[str, Any] = PLAN) -> dict[str, Any]:
    response = await client.post(ROLLOUT, json=plan, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_started_rollout_mirrors_then_the_operator_walks_it_to_promotion(
    client: httpx.AsyncClient,
) -> None:
    """start shadows the variant; promote skips a step; a pause step waits for resume;
    promote --full makes it live; every decision is a revision that names the rollout."""
    record = await started(client)
    assert record["phase"] == "Progressing" and record["step"] == 0
    assert (await routing(client))["shadows"] == [{"variant": "green", "sample": 1.0}]
    skipped = (await act(client, "promote")).json()
    assert skipped["step"] == 1 and (await routing(client))["canary"] == {
        "variant": "green", "weight": 0.2,
    }  # fmt: skip
    assert (await routing(client))["shadows"] == []
    paused = (await act(client, "promote")).json()
    assert paused["phase"] == "Paused" and paused["step"] == 2
    assert (await routing(client))["canary"]["weight"] == 0.2  # a pause keeps the traffic
    resumed = (await act(client, "resume")).json()
    assert resumed["phase"] == "Progressing" and resumed["step"] == 3
    done = (await act(client, "promote", {"full": True})).json()
    assert done["phase"] == "Healthy" and done["message"] == "green is live"
    state = await routing(client)
    assert state["live"] == "green" and state["canary"] is None
    history = (await client.get("/admin/models/iris/history", headers=ADMIN)).json()
    marked = [entry for entry in history if entry.get("analysis")]
    assert [e["analysis"]["outcome"] for e in marked] == [
        "start", "skip", "skip", "resume", "promote",
    ]  # fmt: skip
    assert {e["analysis"]["rollout"] for e in marked} == {record["id"]}
    assert [d["decision"] for d in done["decisions"]] == [
        "start", "skip", "skip", "resume", "promote",
    ]  # fmt: skip


async def test_abort_and_undo_restore_the_routing_from_before_the_rollout(
    client: httpx.AsyncClient,
) -> None:
    """abort sends everything back to live; after a promotion, undo restores the old live."""
    before = await routing(client)
    await started(client)
    aborted = (await act(client, "abort")).json()
    assert aborted["phase"] == "Degraded" and "aborted" in aborted["message"]
    after = await routing(client)
    assert {k: after[k] for k in ("live", "canary", "shadows")} == {
        k: before[k] for k in ("live", "canary", "shadows")
    }
    await started(client)
    await act(client, "promote", {"full": True})
    assert (await routing(client))["live"] == "green"
    undone = (await act(client, "undo")).json()
    assert undone["phase"] == "Degraded" and (await routing(client))["live"] == "blue"


async def test_a_manual_routing_change_ends_the_rollout_and_wins(
    client: httpx.AsyncClient,
) -> None:
    """A flip during a rollout is the operator's: the rollout ends with a revision that leaves
    the routing as the flip made it; undo can still restore the routing from before."""
    await started(client)
    flipped = await client.post("/admin/models/iris/flip", json={"to": "mlp"}, headers=ADMIN)
    assert flipped.status_code == 200

    async def ended() -> dict[str, Any] | None:
        record: dict[str, Any] = (await client.get(ROLLOUT, headers=ADMIN)).json()
        return record if record["phase"] == "Degraded" else None

    record = await wait_until_async(ended)
    assert "routing changed outside the rollout" in record["decisions"][-1]["reason"]
    state = await routing(client)
    assert state["live"] == "mlp" and state["shadows"] == flipped.json()["shadows"]

    async def marked() -> dict[str, Any] | None:
        head: dict[str, Any] = (
            await client.get("/admin/models/iris/history", headers=ADMIN)
        ).json()[-1]
        return head if "analysis" in head else None

    head = await wait_until_async(marked)  # the record is written first, then the history
    assert head["analysis"]["outcome"] == "abort"  # a revision, with the routing unchanged
    assert head["revision"] == flipped.json()["revision"] + 1
    # undo is still there: back to the routing from before the rollout (blue, no shadow).
    assert (await act(client, "undo")).status_code == 200
    state = await routing(client)
    assert (state["live"], state["shadows"]) == ("blue", [])
    assert (await act(client, "undo")).status_code == 409


@pytest.mark.parametrize(
    ("plan", "status", "names"),
    [
        ({**PLAN, "variant": "nope"}, 404, "nope"),
        ({**PLAN, "variant": "blue"}, 409, "live already"),
        ({**PLAN, "steps": [{"canary": True}]}, 400, "steps.0.canary"),
        ({**PLAN, "steps": [{"canary": 0.1, "shadow": 0.5}]}, 400, "exactly one"),
        ({**PLAN, "steps": []}, 400, "steps"),
        ({**PLAN, "surprise": 1}, 400, "surprise"),
        ({**PLAN, "analysis": {"interval": "soon"}}, 400, "analysis.interval"),
        ({**PLAN, "webhooks": [{"type": "rollback", "url": "ftp://x"}]}, 400, "webhooks.0.url"),
    ],
)
async def test_a_bad_plan_is_refused_by_name_and_changes_nothing(
    client: httpx.AsyncClient, plan: dict[str, Any], status: int, names: str
) -> None:
    """Unknown or live variant, bool weight, two actions, no steps, unknown keys, bad
    durations and URLs: each is a 4xx naming the problem; routing and rollouts stay as they were."""
    before = await routing(client)
    response = await client.post(ROLLOUT, json=plan, headers=ADMIN)
    assert response.status_code == status and names in response.json()["error"]
    assert await routing(client) == before
    assert (await client.get(ROLLOUT, headers=ADMIN)).status_code == 404


async def test_verbs_that_do_not_fit_the_rollouts_state_are_409_or_404(
    client: httpx.AsyncClient,
) -> None:
    """No rollout yet: 404; no plan in the config: 404; a second start, pause twice, resume
    when not paused and any verb after the end: 409; an unknown verb 400, unknown model 404."""
    assert (await act(client, "pause")).status_code == 404
    assert (await client.post(ROLLOUT, headers=ADMIN)).status_code == 404  # no config plan
    await started(client)
    assert (await client.post(ROLLOUT, json=PLAN, headers=ADMIN)).status_code == 409
    assert (await act(client, "resume")).status_code == 409
    assert (await act(client, "pause")).status_code == 200
    assert (await act(client, "pause")).status_code == 409
    assert (await act(client, "fast-forward")).status_code == 400
    assert (await act(client, "promote", {"full": 1})).status_code == 400
    assert (await act(client, "abort")).status_code == 200
    for verb in ("pause", "resume", "promote", "abort"):
        assert (await act(client, verb)).status_code == 409, verb
    assert (await client.get("/admin/models/nope/rollout", headers=ADMIN)).status_code == 404
    assert (
        await client.post("/admin/models/nope/rollout", json=PLAN, headers=ADMIN)
    ).status_code == 404
    assert (await client.get(ROLLOUT)).status_code == 401
    answer = await client.post("/v2/models/iris/infer", json=iris_body())
    assert answer.status_code == 200  # the data plane never noticed


async def test_the_configs_plan_starts_by_itself_and_is_not_restarted_after_it_ends(
    make_client: AppClient,
) -> None:
    """A plan in the config starts at start-up; once aborted it is not started again, even
    after another variant's rollout."""
    models = {
        "iris": {
            "variants": {
                "blue": {"path": "iris/1/model.onnx"},
                "green": {"path": "iris/2/model.onnx"},
                "mlp": {"path": "iris/3/model.onnx"},
            },
            "routing": {"live": "blue"},
            "rollout": {"variant": "green", "steps": [{"canary": 0.1, "duration": "1h"}]},
        }
    }
    client = await make_client(models=models)

    async def progressing() -> dict[str, Any] | None:
        response = await client.get(ROLLOUT, headers=ADMIN)
        return response.json() if response.status_code == 200 else None

    record = await wait_until_async(progressing)
    assert record["decisions"][0]["reason"] == "started the config's plan: canary 0.1"
    assert (await routing(client))["canary"] == {"variant": "green", "weight": 0.1}
    assert (await act(client, "abort")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'gateway_rollout_decisions_total{decision="abort",model="iris"} 1.0' in metrics
    assert 'gateway_rollout_step{model="iris"} 0.0' in metrics
    # Later ticks (run here, not waited for) must not start the config's plan again.
    rollouts = client._transport.app.gateway.rollouts  # type: ignore[attr-defined]
    for _ in range(2):
        await rollouts.tick()
    again = (await client.get(ROLLOUT, headers=ADMIN)).json()
    assert again["id"] == record["id"] and again["phase"] == "Degraded"
    # Nor after another variant's rollout has come and gone.
    other = await started(client, {"variant": "mlp", "steps": [{"canary": 0.1}]})
    assert (await act(client, "abort")).status_code == 200
    for _ in range(2):
        await rollouts.tick()
    assert (await client.get(ROLLOUT, headers=ADMIN)).json()["id"] == other["id"]


class Hooks:
    """A webhook receiver on a free port: answers `status[path]` (default 200), keeps bodies."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                hooks.received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(hooks.status.get(self.path, 200))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


async def judged(client: httpx.AsyncClient, requests: int = 400) -> dict[str, Any]:
    """Send traffic, then run the judge's tick (not waited for) and read the rollout."""
    for _ in range(requests // 50):
        answers = await asyncio.gather(
            *(client.post("/v2/models/iris/infer", json=iris_body()) for _ in range(50))
        )
        assert {answer.status_code for answer in answers} == {200}
    await client._transport.app.gateway.rollouts.tick()  # type: ignore[attr-defined]
    answer: dict[str, Any] = (await client.get(ROLLOUT, headers=ADMIN)).json()
    return answer


QUICK = {"interval": "0.05s", "error_rate": {"max_increase": 0.05}, "latency": {"min_samples": 20}}


async def test_a_confirm_promotion_hook_holds_the_promotion_until_it_answers_2xx(
    client: httpx.AsyncClient, hooks: Hooks
) -> None:
    """The gate answers 403: the passed rollout waits and says why; 200: it promotes. The
    event hook hears of every decision with the model, variant and phase."""
    hooks.status["/confirm"] = 403
    plan = {"variant": "green", "analysis": QUICK,
            "steps": [{"canary": 0.5, "duration": 0, "min_requests": 20}],
            "webhooks": [{"type": "confirm-promotion", "url": f"{hooks.url}/confirm"},
                         {"type": "event", "url": f"{hooks.url}/event"}]}  # fmt: skip
    await started(client, plan)
    held = await wait_until_async(lambda: _held(client))
    assert held["phase"] == "Progressing"
    hooks.status["/confirm"] = 200
    done = await wait_until_async(lambda: _phase(client, "Healthy"))
    assert (await routing(client))["live"] == "green"

    async def told() -> list[dict[str, Any]] | None:  # event hooks are called in the background
        events = [body for path, body in hooks.received if path == "/event"]
        return events if len(events) == 2 else None

    events = await wait_until_async(told)
    assert [e["metadata"]["decision"] for e in events] == ["start", "promote"]
    assert events[-1] | {"metadata": None} == {
        "name": "iris", "variant": "green", "phase": "Healthy", "step": 1,
        "message": "green is live", "metadata": None,
    }  # fmt: skip
    assert done["decisions"][-1]["decision"] == "promote"


async def _held(client: httpx.AsyncClient) -> dict[str, Any] | None:
    record = await judged(client)
    return record if record["message"] == "waiting for the confirm-promotion webhook" else None


async def _phase(client: httpx.AsyncClient, phase: str) -> dict[str, Any] | None:
    record = await judged(client)
    return record if record["phase"] == phase else None


async def test_a_rollback_hook_that_answers_2xx_rolls_the_rollout_back(
    client: httpx.AsyncClient, hooks: Hooks
) -> None:
    """Flagger's rollback hook: a 2xx at any tick rolls back, naming the hook as the reason."""
    hooks.status["/rollback"] = 404
    plan = {**PLAN, "webhooks": [{"type": "rollback", "url": f"{hooks.url}/rollback"}]}
    await started(client, plan)
    assert (await judged(client, 0))["phase"] == "Progressing"
    hooks.status["/rollback"] = 200
    record = await wait_until_async(lambda: _phase(client, "Degraded"))
    assert record["decisions"][-1]["reason"] == "the rollback webhook asked for it"
    assert (await routing(client))["shadows"] == []


async def test_a_plan_that_opens_with_a_pause_waits_for_resume_before_any_traffic(
    client: httpx.AsyncClient,
) -> None:
    """A first `pause` step is a gate: routing stays as it was until the operator resumes."""
    before = await routing(client)
    gated = await started(client, {"variant": "green", "steps": [{"pause": True}, {"canary": 0.1}]})
    assert gated["phase"] == "Paused" and gated["message"] == "paused at step 1: resume to go on"
    after = await routing(client)
    assert (after["canary"], after["shadows"]) == (before["canary"], before["shadows"])
    resumed = (await act(client, "resume")).json()
    assert resumed["phase"] == "Progressing" and resumed["step"] == 1
    assert (await routing(client))["canary"] == {"variant": "green", "weight": 0.1}


async def test_a_rollout_takes_over_a_canary_of_its_variant_and_its_abort_leaves_it_none(
    client: httpx.AsyncClient,
) -> None:
    """Green already a 30% canary: the rollout's shadow step removes that canary, and an
    abort restores the routing from before without it (a rolled-back variant keeps no traffic)."""
    await client.put("/admin/models/iris/canary", json={"variant": "green", "weight": 0.3},
                     headers=ADMIN)  # fmt: skip
    await started(client)
    state = await routing(client)
    assert state["canary"] is None and state["shadows"] == [{"variant": "green", "sample": 1.0}]
    await act(client, "abort")
    state = await routing(client)
    assert (state["live"], state["canary"], state["shadows"]) == ("blue", None, [])


async def test_reload_refuses_to_drop_the_variant_of_a_paused_rollout(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A rollout paused before any traffic step still owns its variant: a reload that drops
    it is 409, and the rollout resumes as planned."""
    await started(client, {"variant": "green", "steps": [{"pause": True}, {"canary": 0.2}]})
    config_path = tmp_path / "gateway.yaml"
    config = yaml.safe_load(config_path.read_text())
    del config["models"]["iris"]["variants"]["green"]
    config_path.write_text(yaml.safe_dump(config))
    dropped = await client.post("/admin/reload", headers=ADMIN)
    assert dropped.status_code == 409 and "a rollout ships" in dropped.json()["error"]
    assert (await act(client, "resume")).json()["step"] == 1
    assert (await routing(client))["canary"] == {"variant": "green", "weight": 0.2}
