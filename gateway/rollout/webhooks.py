"""A rollout's webhooks, Flagger's types (README "Rollouts"): POST a JSON body, read the status.

- `confirm-traffic-increase` / `confirm-promotion`: a gate before the next traffic step / the
  promotion; the rollout waits (and asks again at the next analysis) until the hook answers 2xx.
- `rollback`: asked at every tick while the rollout progresses; a 2xx rolls it back.
- `event`: told of every decision; its answer is ignored.

The body is `{"name": model, "variant", "phase", "step", "message", "metadata": {"rollout",
"decision", "reason"}}`. A hook that cannot be reached counts as "no" (not 2xx) and is logged;
calls run in a thread with the hook's timeout, off the event loop; event hooks in the background.
"""

import asyncio
import logging
import urllib.error
import urllib.request
from typing import Any

import orjson

from gateway.rollout.plan import Webhook
from gateway.rollout.record import Rollout

log = logging.getLogger(__name__)


class Webhooks:
    """Calls the webhooks a rollout's plan lists. A hook that fails is logged once, until it
    answers again."""

    def __init__(self) -> None:
        self._failing: set[str] = set()
        self._events: set[asyncio.Task[bool]] = set()  # in flight; held so none is collected

    async def confirmed(self, record: Rollout, kind: str) -> bool:
        """Whether every hook of `kind` (a gate) says yes; True when there is none."""
        results = [await self._call(hook, record) for hook in _of(record, kind)]
        return all(results)

    async def rollback_requested(self, record: Rollout) -> bool:
        for hook in _of(record, "rollback"):
            if await self._call(hook, record):
                return True
        return False

    def event(self, record: Rollout) -> None:
        """Tell the `event` hooks, in the background: a slow hook delays nothing."""
        for hook in _of(record, "event"):
            task = asyncio.create_task(self._call(hook, record))
            self._events.add(task)
            task.add_done_callback(self._events.discard)

    async def _call(self, hook: Webhook, record: Rollout) -> bool:
        body = orjson.dumps(_payload(record))
        try:
            answered = await asyncio.to_thread(_post, hook, body)
        except (urllib.error.URLError, OSError) as exc:
            if hook.url not in self._failing:
                log.warning("rollout webhook %s (%s) failed: %s", hook.url, hook.type, exc)
            self._failing.add(hook.url)
            return False
        self._failing.discard(hook.url)
        return answered


def _of(record: Rollout, kind: str) -> list[Webhook]:
    return [hook for hook in record.plan.webhooks if hook.type == kind]


def _payload(record: Rollout) -> dict[str, Any]:
    decision = record.decisions[-1] if record.decisions else None
    return {
        "name": record.model,
        "variant": record.plan.variant,
        "phase": record.phase,
        "step": record.step,
        "message": record.message,
        "metadata": {
            "rollout": record.id,
            "decision": decision.decision if decision else None,
            "reason": decision.reason if decision else None,
        },
    }


def _post(hook: Webhook, body: bytes) -> bool:
    request = urllib.request.Request(
        hook.url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout) as response:
            return bool(200 <= response.status < 300)
    except urllib.error.HTTPError as exc:  # an answer, not a failure
        return 200 <= exc.code < 300
