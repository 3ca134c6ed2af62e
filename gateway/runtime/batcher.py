"""Per-variant queues: admission control, deadlines and dynamic batching (README "Batching and
admission").

A request for a variant whose runs go to threads waits in that variant's queue until one of its
`slots` (one per runner thread) is free. The queue answers at once, rather than letting a request
wait for nothing:

- 429 (`QueueFull`, with Retry-After) when `max_queue_size` requests already wait (Triton's
  `default_queue_policy.max_queue_size`; Ray Serve's `max_queued_requests` answers the same way);
- 504 (`InferenceTimeout`) when the work ahead of it would not end before its deadline; and at
  its deadline, if it is still waiting then.

The work ahead counts every request admitted and not yet answered: queued, running, and admitted
while its body is still being read (a place `Held` for it, so that a burst of heads cannot all be
admitted to the same free places). A request is refused with 504 when more requests are
outstanding than the variant's `ConcurrencyLimit` allows (it shrinks when answers come late),
or when the runs the work ahead and its own rows need (full batches, at best) would not end
before its deadline at the variant's `RunCost` (gateway.runtime.admission).

With `max_batch_size` > 0 (Triton's dynamic batcher), a free slot takes the oldest request and
every later one with the same inputs (names, datatypes and every dimension but the first) and the
same requested outputs, up to `max_batch_size` rows, runs them as one onnxruntime call on a
thread and hands each caller its own rows of every output. A request larger than
`max_batch_size` runs alone.

When to wait for a fuller batch is where batchers differ. Triton waits up to
`max_queue_delay_microseconds` for a preferred size; BentoML's batcher was criticised for making a
lone request wait for a batch that never fills. Here a request waits for others only while the
variant has recently had more requests outstanding (queued or running) than are queued and
running now, which tells that concurrent callers exist, and never past `max_queue_delay_us` after
it arrived. A lone caller (c=1) therefore never waits: its request runs as soon as a slot is free.
"""

import asyncio
import collections
import math
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from gateway.errors import InferenceTimeout, ModelRefused, QueueFull
from gateway.runtime.admission import ConcurrencyLimit, RunCost
from gateway.runtime.runner import Outputs, Runner
from gateway.runtime.session import ModelSession

DEMAND_WINDOW_S = 1.0  # the most rows outstanding at once is remembered for one to two windows
SETTLE_AT_ONCE = 8  # a batch's callers answered in one event-loop iteration at most


class QueuePolicy(NamedTuple):
    """A variant's queue, from its config (Triton's names; README "Batching and admission")."""

    max_batch_size: int = 0  # rows a batch may hold; 0: no batching
    max_queue_delay_s: float = 0.0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 0  # requests waiting at most; 0: no bound

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0


class QueueObserver(Protocol):
    """Where a queue reports what it does (the gateway's metrics)."""

    def observe_batch(self, model: str, variant: str, rows: int) -> None: ...

    def observe_queue(self, model: str, variant: str, seconds: float) -> None: ...

    def rejected(self, model: str, variant: str, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class _Waiting:
    """One request in a queue, and the future its caller awaits."""

    key: Hashable
    inputs: Outputs = field(repr=False)
    rows: int
    names: list[str]
    deadline: float  # time.perf_counter() seconds
    arrived: float
    future: asyncio.Future[tuple[Outputs, float]] = field(repr=False)
    queued: bool = True  # False once a batch has taken it


class VariantQueue:
    """The queue of one variant (one ModelSession); used on the event loop only."""

    def __init__(
        self,
        session: ModelSession,
        policy: QueuePolicy,
        runner: Runner,
        observer: QueueObserver,
    ) -> None:
        self.session = session
        self.policy = policy
        self._runner = runner
        self._observer = observer
        self._slots = runner.threads
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._queued_rows = 0
        self._running = 0  # batches on threads now
        self._running_rows = 0
        self._running_requests = 0
        # The most rows outstanding (queued or running) at once, in this window and the last:
        # how many concurrent callers are about.
        self._peaks = (0, 0)
        self._window_ends = 0.0
        self._cost = RunCost(session.seconds_per_row)  # of a run, batched as served
        self._held = 0  # places held for admitted requests whose body is being read
        self._limit = ConcurrencyLimit()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The refusals' messages, the same every time: an answer under overload costs less
        # (gateway.http.door keeps each answer's bytes).
        name = f"model {session.model!r} variant {session.variant!r}"
        self._messages = (
            f"{name}: {policy.max_queue_size} requests are already waiting (max_queue_size); "
            "retry later",
            f"{name}: the requests ahead of this one would not be answered before its deadline "
            "(the request timeout); retry later",
        )

    async def run(
        self, inputs: Outputs, names: list[str], rows: int, deadline: float
    ) -> tuple[Outputs, float]:
        """The outputs of `inputs` and the duration of the run that made them.

        Raises QueueFull (429) or InferenceTimeout (504) as the module says, ModelRefused (400)
        when the model refuses these inputs, InferenceTimeout when the run outlasts `deadline`
        (`time.perf_counter()` seconds: precise, where uvloop's clock moves in milliseconds)."""
        now = time.perf_counter()
        self.admit(rows, now, deadline)
        future: asyncio.Future[tuple[Outputs, float]] = asyncio.get_running_loop().create_future()
        key = self._key(inputs, names, rows)
        waiting = _Waiting(key, inputs, rows, names, deadline, now, future)
        self._waiting.append(waiting)
        self._queued_rows += rows
        self._note_demand(now)
        self._dispatch()
        try:
            async with asyncio.timeout(deadline - now):
                return await future  # cancelled with the caller: a batch skips it
        except TimeoutError:
            raise self._expired(waiting) from None

    def admit(self, rows: int, now: float, deadline: float) -> None:
        """Raise QueueFull or InferenceTimeout (and count it) if a request of `rows` rows
        arriving `now` cannot be queued; called again before the request's body is decoded."""
        limit = self.policy.max_queue_size
        # Held places count as waiting, but for those a free slot will take at once.
        free = self._slots - self._running
        if limit and len(self._waiting) + max(self._held - free, 0) >= limit:
            self._observer.rejected(self.session.model, self.session.variant, "queue_full")
            retry_after_s = max(1, math.ceil(self._backlog_seconds()))
            raise QueueFull(self._messages[0], retry_after_s)
        if self._outstanding() >= self._limit.limit or now + self._backlog_seconds(rows) > deadline:
            self._observer.rejected(self.session.model, self.session.variant, "deadline")
            raise InferenceTimeout(self._messages[1])

    def _outstanding(self) -> int:
        return len(self._waiting) + self._running_requests + self._held

    def _backlog_seconds(self, rows: int = 0) -> float:
        """How long until the work admitted and not yet answered, and a request of `rows` more
        rows, would be done (the module says how)."""
        total = self._queued_rows + self._running_rows + self._held + rows
        if self.policy.batching:
            runs = -(-total // self.policy.max_batch_size)  # full batches, at best
        else:
            runs = len(self._waiting) + self._running + self._held + (rows > 0)
        return self._cost.seconds(runs, total) / self._slots

    def hold(self) -> "Held":
        """Hold a place for a request just admitted, until its inputs are queued (`run`) or it
        fails before: the caller releases it either way, right before `run`."""
        self._held += 1
        return Held(self)

    def _release(self) -> None:
        self._held -= 1

    def _expired(self, waiting: _Waiting) -> InferenceTimeout:
        model, variant = self.session.model, self.session.variant
        if not waiting.queued:  # already running: the run itself was too slow
            return InferenceTimeout(
                f"inference of model {model!r} variant {variant!r} did not end within the "
                "request's deadline"
            )
        # (Not deque.remove's ValueError: its message holds the repr of what it did not find.)
        self._waiting.remove(waiting)
        self._queued_rows -= waiting.rows
        now = time.perf_counter()
        self._limit.answered(waiting.arrived, waiting.deadline, now, self._outstanding())
        self._observer.rejected(model, variant, "deadline")
        return InferenceTimeout(
            f"model {model!r} variant {variant!r}: the request waited in the queue until its "
            "deadline (the request timeout)"
        )

    def _key(self, inputs: Outputs, names: list[str], rows: int) -> Hashable:
        """Requests with equal keys may share a batch; a key of None never shares one."""
        if not self.policy.batching or rows > self.policy.max_batch_size:
            return None
        parts: list[Hashable] = [tuple(names)]
        for name, array in inputs.items():
            if array.ndim == 0 or array.shape[0] != rows or rows == 0:
                return None  # no common batch dimension to join on
            parts.append((name, array.dtype.str, array.shape[1:]))
        return tuple(parts)

    def _dispatch(self) -> None:
        """Start batches while slots are free and waiting for a fuller one is not worth it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._running < self._slots and self._waiting:
            head = self._waiting[0]
            batch = self._gather(head)
            rows = sum(waiting.rows for waiting in batch)
            wait = head.arrived + self.policy.max_queue_delay_s - time.perf_counter()
            if wait > 0 and self._worth_waiting(rows):
                # uvloop's timers count whole milliseconds: a shorter wait fires on the next
                # loop iteration, after the reads that may bring batch-mates, and looks again.
                self._timer = asyncio.get_running_loop().call_later(wait, self._dispatch)
                return
            self._start(batch, rows)

    def _gather(self, head: _Waiting) -> list[_Waiting]:
        """The head and the later requests that may join it, oldest first, within the caps."""
        if head.key is None:
            return [head]
        batch, rows = [head], head.rows
        for waiting in self._joinable(head):
            if rows + waiting.rows <= self.policy.max_batch_size:
                batch.append(waiting)
                rows += waiting.rows
                if rows == self.policy.max_batch_size:
                    break  # full: a long queue is not scanned to its end
        return self._preferred_cut(batch, rows)

    def _joinable(self, head: _Waiting) -> Iterator[_Waiting]:
        it = iter(self._waiting)
        next(it)  # the head itself
        return (waiting for waiting in it if waiting.key == head.key)

    def _preferred_cut(self, batch: list[_Waiting], rows: int) -> list[_Waiting]:
        """Cut the batch at the largest preferred size it reaches, if any (Triton's rule)."""
        preferred = self.policy.preferred_batch_size
        if not preferred or rows in preferred:
            return batch
        total, best = 0, 0
        for index, waiting in enumerate(batch):
            total += waiting.rows
            if total in preferred:
                best = index + 1
        return batch[:best] if best else batch

    def _note_demand(self, now: float) -> None:
        outstanding = self._queued_rows + self._running_rows
        current, previous = self._peaks
        if now >= self._window_ends:
            recent = now < self._window_ends + DEMAND_WINDOW_S
            self._peaks = (outstanding, current if recent else 0)
            self._window_ends = now + DEMAND_WINDOW_S
        elif outstanding > current:
            self._peaks = (outstanding, previous)

    def _worth_waiting(self, rows: int) -> bool:
        """Whether callers are about who would make this batch fuller (the module says why)."""
        policy = self.policy
        if not policy.batching or policy.max_queue_delay_s <= 0:
            return False
        cap = max(policy.preferred_batch_size, default=policy.max_batch_size)
        return rows < min(cap, max(self._peaks) - self._running_rows)

    def _start(self, batch: list[_Waiting], rows: int) -> None:
        for each in batch:
            each.queued = False
        waiting = self._waiting
        if all(waiting[i] is batch[i] for i in range(len(batch))):  # the usual case: the oldest
            for _ in batch:
                waiting.popleft()
        else:
            taken = {id(each) for each in batch}
            self._waiting = collections.deque(w for w in waiting if id(w) not in taken)
        self._queued_rows -= rows
        self._running += 1
        self._running_rows += rows
        self._running_requests += len(batch)
        task = asyncio.get_running_loop().create_task(self._run_batch(batch, rows))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[_Waiting], rows: int) -> None:
        now = time.perf_counter()
        model, variant = self.session.model, self.session.variant
        for waiting in batch:
            self._observer.observe_queue(model, variant, now - waiting.arrived)
        self._observer.observe_batch(model, variant, rows)
        slot = _Slot(self, rows, len(batch))
        try:
            if len(batch) == 1:
                await self._run_alone(batch[0])
            else:
                await self._run_together(batch, rows, max(w.deadline for w in batch) - now, slot)
        finally:
            slot.free()

    def _free_slot(self, rows: int, requests: int) -> None:
        self._running -= 1
        self._running_rows -= rows
        self._running_requests -= requests
        self._dispatch()

    async def _run_together(
        self, batch: list[_Waiting], rows: int, timeout: float, slot: "_Slot"
    ) -> None:
        names = batch[0].names
        joined = {
            name: np.concatenate([waiting.inputs[name] for waiting in batch])
            for name in batch[0].inputs
        }
        try:
            outputs, seconds = await self._runner.run_threaded(
                self.session, joined, names, timeout, rows
            )
        except ModelRefused:
            # One request's data may be what the model refuses: run each alone, so that only
            # the requests the model refuses fail.
            await self._each_alone(batch)
            return
        except Exception as exc:
            for waiting in batch:
                _settle(waiting, exc)
            return
        if any(array.ndim == 0 or array.shape[0] != rows for array in outputs.values()):
            await self._each_alone(batch)  # an output without the batch dimension: no split
            return
        self._cost.learn(rows, seconds)
        slot.free()  # the next batch runs while this one's callers are answered
        start = 0
        for index, waiting in enumerate(batch):
            if index and not index % SETTLE_AT_ONCE:
                # Callers answered in groups: the event loop reads and answers other requests
                # (and health probes) between groups, rather than after a whole batch's encoding.
                await asyncio.sleep(0)
            end = start + waiting.rows
            _settle(waiting, ({name: array[start:end] for name, array in outputs.items()}, seconds))
            self._answered(waiting)
            start = end

    async def _each_alone(self, batch: list[_Waiting]) -> None:
        for waiting in batch:
            await self._run_alone(waiting)

    async def _run_alone(self, waiting: _Waiting) -> None:
        if waiting.future.done():  # its caller's deadline passed meanwhile
            return
        timeout = waiting.deadline - time.perf_counter()
        try:
            result = await self._runner.run_threaded(
                self.session, waiting.inputs, waiting.names, timeout, waiting.rows
            )
        except Exception as exc:
            _settle(waiting, exc)
            return
        self._cost.learn(waiting.rows, result[1])
        _settle(waiting, result)
        self._answered(waiting)

    def _answered(self, waiting: _Waiting) -> None:
        now = time.perf_counter()
        self._limit.answered(waiting.arrived, waiting.deadline, now, self._outstanding())


class _Slot:
    """A runner slot taken by one batch; `free` gives it back, once."""

    __slots__ = ("_queue", "_requests", "_rows")

    def __init__(self, queue: VariantQueue, rows: int, requests: int) -> None:
        self._queue: VariantQueue | None = queue
        self._rows = rows
        self._requests = requests

    def free(self) -> None:
        if self._queue is not None:
            self._queue._free_slot(self._rows, self._requests)
            self._queue = None


class Held:
    """A place held in a variant's queue (`VariantQueue.hold`); `release` is idempotent."""

    __slots__ = ("_queue",)

    def __init__(self, queue: VariantQueue) -> None:
        self._queue: VariantQueue | None = queue

    def release(self) -> None:
        if self._queue is not None:
            self._queue._release()
            self._queue = None


def _settle(waiting: _Waiting, outcome: tuple[Outputs, float] | BaseException) -> None:
    if waiting.future.done():
        return
    if isinstance(outcome, BaseException):
        waiting.future.set_exception(outcome)
    else:
        waiting.future.set_result(outcome)


class Scheduler:
    """Sends each run inline, to a thread, or through its variant's queue.

    A variant without batching whose runs are expected to be shorter than the runner's inline
    threshold runs on the event loop (`Runner.run`); every other run goes through the variant's
    `VariantQueue`. Queues are made on first use and follow reloads: a session that a reload
    replaced keeps its queue until its last request has left.
    """

    def __init__(
        self,
        runner: Runner,
        policies: Mapping[tuple[str, str], QueuePolicy],
        observer: QueueObserver,
    ) -> None:
        self.runner = runner
        self._observer = observer
        self._policies = dict(policies)
        self._queues: dict[ModelSession, VariantQueue] = {}
        # Models with a variant whose runs have gone through a queue: the only ones whose
        # requests can be refused before their body is read (gateway.http.door).
        self.queued_models: set[str] = set()

    def policy(self, model: str, variant: str) -> QueuePolicy:
        return self._policies.get((model, variant), _NO_BATCHING)

    def configure(
        self, policies: Mapping[tuple[str, str], QueuePolicy], sessions: set[ModelSession]
    ) -> None:
        """At start-up and after a reload: the policies; the queues of the sessions served,
        made now for those whose runs go through one (a first burst is bounded too), those of
        sessions no longer served forgotten."""
        self._policies = dict(policies)
        self._queues = {
            session: queue
            for session, queue in self._queues.items()
            if session in sessions and queue.policy == self.policy(session.model, session.variant)
        }
        self.queued_models = {session.model for session in self._queues}
        for session in sessions:
            self._queue(session, 1)

    def admit(self, session: ModelSession, deadline: float, hold: bool = False) -> Held | None:
        """Refuse a request at once (`VariantQueue.admit`) if its variant's queue cannot take it,
        before its body is decoded: under overload a refusal must cost less than a request.
        With `hold`, an admitted request holds its place (`VariantQueue.hold`) while its body is
        read: the caller releases it right before `run`."""
        queue = self._queues.get(session)
        if queue is None:  # its runs are made inline: nothing waits, nothing to refuse
            return None
        queue.admit(1, time.perf_counter(), deadline)
        return queue.hold() if hold else None

    async def run(
        self,
        session: ModelSession,
        inputs: Outputs,
        names: list[str],
        rows: int,
        deadline: float,
    ) -> tuple[Outputs, float]:
        """The outputs and the model run's duration; errors as `VariantQueue.run` says.
        `deadline`: `time.perf_counter()` seconds."""
        queue = self._queue(session, rows)
        if queue is None:
            return self.runner.run_inline(session, inputs, names, rows)
        return await queue.run(inputs, names, rows, deadline)

    def _queue(self, session: ModelSession, rows: int) -> VariantQueue | None:
        """The variant's queue (made on first use), or None when a run of `rows` rows is made
        inline, on the event loop, with no queue."""
        policy = self.policy(session.model, session.variant)
        if not policy.batching and self.runner.inline(session, rows):
            return None
        queue = self._queues.get(session)
        if queue is None:
            queue = VariantQueue(session, policy, self.runner, self._observer)
            self._queues[session] = queue
            self.queued_models.add(session.model)
        return queue


_NO_BATCHING = QueuePolicy()
