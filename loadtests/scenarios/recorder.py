"""What a scenario saw: answers per variant, per routing revision and per time bucket, plus phases.

The locustfile feeds it from locust's `request` event and the admin controller adds a phase for
every routing change; at the end it is written as JSON for `run.py` to judge and plot. Answers
are attributed to a phase by their `x-gateway-revision` header, not by the time they arrived, so
a request routed just before a change never counts against the next step.
"""

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NO_VARIANT = "none"  # a failed request that never got an answer naming its variant


@dataclass(frozen=True)
class Expected:
    """The routing a phase should show: live variant and optional canary with its weight."""

    live: str
    canary: str | None = None
    weight: float = 0.0


@dataclass(frozen=True)
class Phase:
    """One routing state the scenario put in place, from `at` seconds after the start."""

    name: str
    action: str
    at: float
    revision: int
    expected: Expected


@dataclass
class _Bucket:
    variants: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class Recorder:
    """Counts answers; cheap enough to call on every request inside the locust process."""

    def __init__(self, scenario: str, bucket_s: float = 1.0) -> None:
        self.scenario = scenario
        self.bucket_s = bucket_s  # time resolution of the plot
        self.started = time.time()
        self.phases: list[Phase] = []
        self.admin_errors: list[str] = []
        self.notes: list[str] = []
        self.locust_stats: dict[str, Any] = {}  # locust's own final figures, set at the end
        self.rollout: dict[str, Any] = {}  # the rollout scenario's record and decisions
        self._by_revision: defaultdict[int | None, Counter[str]] = defaultdict(Counter)
        self._buckets: defaultdict[int, _Bucket] = defaultdict(_Bucket)

    def elapsed(self) -> float:
        return time.time() - self.started

    def answer(self, variant: str | None, revision: int | None, ms: float, failed: bool) -> None:
        """Count one request (successful or not) under its variant, revision and time bucket."""
        variant = variant or NO_VARIANT
        self._by_revision[revision][variant] += 1
        bucket = self._buckets[int(self.elapsed() / self.bucket_s)]
        bucket.variants[variant] += 1
        bucket.latencies_ms.append(ms)
        bucket.failures += failed

    def phase(
        self, name: str, action: str, revision: int, expected: Expected, at: float | None = None
    ) -> None:
        """A routing state from now on, or from `at` seconds after the start when it is known."""
        at = self.elapsed() if at is None else at
        self.phases.append(Phase(name, action, round(at, 3), revision, expected))

    def to_json(self) -> dict[str, Any]:
        by_variant: Counter[str] = Counter()
        for counts in self._by_revision.values():
            by_variant.update(counts)
        return {
            "scenario": self.scenario,
            "started_at": self.started,
            "phases": [asdict(phase) for phase in self.phases],
            "admin_errors": self.admin_errors,
            "notes": self.notes,
            "locust": self.locust_stats,
            "rollout": self.rollout,
            "by_variant": dict(by_variant),
            "by_revision": {str(rev): dict(c) for rev, c in self._by_revision.items()},
            "bucket_s": self.bucket_s,
            "buckets": [self._bucket_json(i, b) for i, b in sorted(self._buckets.items())],
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    def _bucket_json(self, index: int, bucket: _Bucket) -> dict[str, Any]:
        ordered = sorted(bucket.latencies_ms)
        return {
            "t": round(index * self.bucket_s, 3),
            "variants": dict(bucket.variants),
            "failures": bucket.failures,
            **{f"p{q}": round(percentile(ordered, q), 2) for q in (50, 95, 99)},
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
