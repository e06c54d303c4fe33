"""A fixed-bucket latency histogram: O(log buckets) to record, no allocation.

Buckets grow geometrically by 10 % from 10 us to ~100 s, so a percentile read
from it is within 10 % of the true value: enough for reporting and for the
guard's comparisons, at a cost the request path does not notice.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

_FIRST_NS: Final = 10_000
_GROWTH: Final = 1.1


def _bounds() -> tuple[int, ...]:
    bounds: list[int] = []
    edge = float(_FIRST_NS)
    while edge < 100e9:
        bounds.append(int(edge))
        edge *= _GROWTH
    return tuple(bounds)


BOUNDS: Final = _bounds()


class LatencyHistogram:
    __slots__ = ("count", "counts")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.count = 0

    def record(self, ns: int) -> None:
        self.counts[bisect_left(BOUNDS, ns)] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in ns, as its bucket's upper bound; 0 if empty."""
        if not self.count:
            return 0.0
        rank = max(1, round(self.count * q / 100))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return float(BOUNDS[min(index, len(BOUNDS) - 1)])
        return float(BOUNDS[-1])
