"""What a variant's queue learns from the runs it serves, to admit or refuse the next request
(gateway.runtime.batcher; README "Batching and admission").

- `RunCost`: how long a run of n rows takes, as a fixed part plus a part per row. A batching
  variant's runs cost less per row the fuller they are (the heavy model: ~1 ms for one row, ~5.5
  ms for 32), so a cost per row alone, learned from small batches, would overrate a long queue.
- `ConcurrencyLimit`: how many requests may be admitted and not yet answered at once, found by
  additive increase and multiplicative decrease (AIMD, as TCP's congestion window; Envoy's and
  Netflix's adaptive concurrency limits apply it to servers). The cost model sees the model's runs
  only; the limit also sees everything else that delays an answer, such as an event loop busy
  reading and refusing requests on the same core under overload.
"""

import math

COST_SMOOTHING = 0.05  # weight of the newest run in the fitted cost (about the last 20 runs)
LIMIT_INCREASE = 1.0  # requests added to the limit per `limit` answers in time
LIMIT_DECREASE = 0.2  # share of the limit cut when an answer is late
LIMIT_LEAST = 1.0
IN_TIME_SHARE = 0.5  # an answer is in time within this share of its time to its deadline


class RunCost:
    """The duration of a run of `rows` rows: `fixed + per_row * rows` seconds, fitted by
    exponentially weighted least squares to the runs served; while the runs' sizes do not
    vary, all of it is per row. Starts at `per_row` (the warm-up's measure)."""

    def __init__(self, per_row: float) -> None:
        self.fixed = 0.0
        self.per_row = per_row
        self._sums = [0.0] * 5  # weight, rows, seconds, rows squared, rows times seconds

    def learn(self, rows: int, seconds: float) -> None:
        keep = 1.0 - COST_SMOOTHING
        added = (1.0, rows, seconds, rows * rows, rows * seconds)
        self._sums = [keep * total + value for total, value in zip(self._sums, added, strict=True)]
        weight, x, y, xx, xy = self._sums
        mean_x, mean_y = x / weight, y / weight
        spread = xx / weight - mean_x * mean_x
        slope = (xy / weight - mean_x * mean_y) / spread if spread > 0.25 else 0.0
        if slope > 0 and mean_y - slope * mean_x >= 0:
            self.fixed, self.per_row = mean_y - slope * mean_x, slope
        else:  # one size only, or noise: all of it per row
            self.fixed, self.per_row = 0.0, mean_y / max(mean_x, 1.0)

    def seconds(self, runs: int, rows: int) -> float:
        """How long `runs` runs of `rows` rows in all would take."""
        return runs * self.fixed + rows * self.per_row


class ConcurrencyLimit:
    """How many requests may be outstanding (admitted, not yet answered) at once: none at first;
    from the first late answer (one given after `IN_TIME_SHARE` of its time to its deadline), a
    fifth less than were outstanding then. Cut by a fifth again at a late answer, once for the
    requests admitted before the previous cut; raised by one for every `limit` answers in time
    while it was half used or more."""

    def __init__(self) -> None:
        self.limit = math.inf
        self._cut_at = 0.0  # time.perf_counter() of the last cut

    def answered(self, arrived: float, deadline: float, now: float, outstanding: int) -> None:
        """One answer, to a request queued at `arrived` with `deadline`, given at `now` while
        `outstanding` requests were admitted and not yet answered."""
        if now - arrived > IN_TIME_SHARE * (deadline - arrived):
            if arrived >= self._cut_at:  # admitted under the limit as it is now
                least = min(self.limit, outstanding + 1.0)
                self.limit = max(LIMIT_LEAST, least * (1.0 - LIMIT_DECREASE))
                self._cut_at = now
        elif 2 * outstanding >= self.limit:
            self.limit += LIMIT_INCREASE / self.limit
