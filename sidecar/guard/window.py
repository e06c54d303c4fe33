"""A sliding window of server-side outcomes and latencies, by count and by time.

`record` is O(1) amortised with no allocation beyond the deque slot: a running
count of failures and of consecutive failures, and eviction of entries that
fall out of the count window or the time window. Percentiles sort the window's
latencies, so they are computed only when the rules ask (every few requests).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowStats:
    requests: int
    failures: int
    consecutive_failures: int
    error_ratio: float
    span_s: float  # time covered by the window's entries

    def describe(self) -> dict[str, str]:
        return {"requests": str(self.requests), "failures": str(self.failures),
                "consecutive_failures": str(self.consecutive_failures),
                "error_ratio": f"{self.error_ratio:.3f}", "span_s": f"{self.span_s:.1f}"}


class OutcomeWindow:
    __slots__ = ("_entries", "_failures", "_max_age_s", "consecutive_failures", "total")

    def __init__(self, max_requests: int, max_age_s: float) -> None:
        self._entries: deque[tuple[float, bool, int]] = deque(maxlen=max_requests)
        self._failures = 0
        self._max_age_s = max_age_s
        self.consecutive_failures = 0
        self.total = 0  # every outcome ever recorded

    def record(self, now: float, ok: bool, latency_ns: int) -> None:
        entries = self._entries
        if len(entries) == entries.maxlen and not entries[0][1]:
            self._failures -= 1  # the append below evicts a failure
        entries.append((now, ok, latency_ns))
        self.total += 1
        if ok:
            self.consecutive_failures = 0
        else:
            self._failures += 1
            self.consecutive_failures += 1
        self._expire(now)

    def _expire(self, now: float) -> None:
        entries, oldest = self._entries, now - self._max_age_s
        while entries and entries[0][0] < oldest:
            _, ok, _ = entries.popleft()
            if not ok:
                self._failures -= 1

    def stats(self, now: float) -> WindowStats:
        self._expire(now)
        n = len(self._entries)
        span = now - self._entries[0][0] if n else 0.0
        return WindowStats(n, self._failures, self.consecutive_failures,
                           self._failures / n if n else 0.0, span)

    def latency_percentile(self, q: float, now: float) -> tuple[float, int]:
        """(q-th percentile of successful requests' latency in ns, sample count)."""
        self._expire(now)
        samples = sorted(lat for _, ok, lat in self._entries if ok)
        if not samples:
            return 0.0, 0
        index = min(len(samples) - 1, max(0, round(len(samples) * q / 100) - 1))
        return float(samples[index]), len(samples)
