"""Figures of the benchmark: per-run numbers, medians across rounds, the tables.

This module owns the arithmetic and the presentation: latency percentiles,
requests/s and CPU per request of one run, the median of each figure across
rounds, the sidecar/minimal ratios checked against the design's targets, and
the plain-text table printed per scenario. No I/O besides building strings.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

SERVERS = ("minimal", "sidecar")
ROWS = ("floor", *SERVERS)


@dataclass(frozen=True, slots=True)
class Figures:
    """One measured run (or the median of several: then `round` is -1)."""

    name: str  # floor, minimal or sidecar
    round: int
    requests: int
    window_s: float
    req_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    rss_mb: float | None  # None for the floor (the benchmark process itself)
    errors: int
    #: CPU of the client processes per request (0 for the floor): shows whether
    #: the clients or the server ran out of CPU.
    client_cpu_us_per_req: float = 0.0
    #: Mean cores every other process (and the kernel outside them) used in the
    #: window: a noisy neighbour shows here.
    others_cores: float = 0.0

    @property
    def server_cores(self) -> float:
        """Mean CPU cores the server (or the floor's process) used in the window."""
        return self.cpu_us_per_req * self.req_s / 1e6


@dataclass(frozen=True, slots=True)
class Targets:
    """The design's targets for one scenario, as sidecar/minimal ratios."""

    min_req_s_ratio: float
    max_p99_ratio: float = 1.2


def figures(
    name: str,
    round_: int,
    latencies_s: list[float],
    *,
    window_s: float,
    cpu_s: float,
    rss_mb: float | None,
    errors: int,
    client_cpu_s: float = 0.0,
    others_cpu_s: float = 0.0,
) -> Figures:
    count = len(latencies_s)
    if count:
        p50, p99 = np.percentile(np.asarray(latencies_s), [50, 99]) * 1000.0
    else:
        p50 = p99 = float("nan")
    return Figures(
        name=name,
        round=round_,
        requests=count,
        window_s=window_s,
        req_s=count / window_s,
        p50_ms=float(p50),
        p99_ms=float(p99),
        cpu_us_per_req=cpu_s / count * 1e6 if count else float("nan"),
        rss_mb=rss_mb,
        errors=errors,
        client_cpu_us_per_req=client_cpu_s / count * 1e6 if count else float("nan"),
        others_cores=others_cpu_s / window_s,
    )


def median(runs: list[Figures]) -> Figures:
    """Each figure's median across rounds (errors: the total)."""
    rss = [r.rss_mb for r in runs if r.rss_mb is not None]
    return Figures(
        name=runs[0].name,
        round=-1,
        requests=int(statistics.median(r.requests for r in runs)),
        window_s=statistics.median(r.window_s for r in runs),
        req_s=statistics.median(r.req_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        cpu_us_per_req=statistics.median(r.cpu_us_per_req for r in runs),
        rss_mb=statistics.median(rss) if rss else None,
        errors=sum(r.errors for r in runs),
        client_cpu_us_per_req=statistics.median(r.client_cpu_us_per_req for r in runs),
        others_cores=statistics.median(r.others_cores for r in runs),
    )


@dataclass(frozen=True, slots=True)
class Ratios:
    """sidecar/minimal of the medians, and of each round's pair (drift check)."""

    req_s: float
    p99: float
    cpu: float
    per_round_req_s: list[float]
    per_round_p99: list[float]

    def verdict(self, targets: Targets) -> tuple[bool, bool]:
        return self.req_s >= targets.min_req_s_ratio, self.p99 <= targets.max_p99_ratio


def ratios(minimal: list[Figures], sidecar: list[Figures]) -> Ratios:
    m, s = median(minimal), median(sidecar)
    return Ratios(
        req_s=s.req_s / m.req_s,
        p99=s.p99_ms / m.p99_ms,
        cpu=s.cpu_us_per_req / m.cpu_us_per_req,
        per_round_req_s=[b.req_s / a.req_s for a, b in zip(minimal, sidecar, strict=True)],
        per_round_p99=[b.p99_ms / a.p99_ms for a, b in zip(minimal, sidecar, strict=True)],
    )


def _row(f: Figures) -> str:
    rss = f"{f.rss_mb:8.1f}" if f.rss_mb is not None else f"{'-':>8}"
    return (
        f"{f.name:<9}{f.req_s:>10.0f}{f.p50_ms:>9.3f}{f.p99_ms:>9.3f}"
        f"{f.cpu_us_per_req:>12.0f}{rss}{f.server_cores:>7.2f}"
    )


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(title: str, rows: list[Figures], r: Ratios, targets: Targets) -> str:
    """The printed table of one scenario: one row per server, then the ratios."""
    rps_ok, p99_ok = r.verdict(targets)
    per_rps = " ".join(f"{x:.2f}" for x in r.per_round_req_s)
    per_p99 = " ".join(f"{x:.2f}" for x in r.per_round_p99)
    lines = [
        title,
        f"{'':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'RSS MB':>8}"
        f"{'cores':>7}",
        *(_row(f) for f in rows),
        f"sidecar/minimal: req/s {r.req_s:.2f}x (target >= {targets.min_req_s_ratio:.1f}x:"
        f" {_mark(rps_ok)}), p99 {r.p99:.2f}x (target <= {targets.max_p99_ratio:.1f}x:"
        f" {_mark(p99_ok)}), CPU/req {r.cpu:.2f}x",
        f"per round: req/s {per_rps}; p99 {per_p99}",
    ]
    return "\n".join(lines)
