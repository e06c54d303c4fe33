"""Figures and tables: what every benchmark computes from its records and prints.

Owns the arithmetic and the presentation: `pct`, `median`, `ratio`, `fmt`;
`Figures`, the client-side figures of a window of calls (req/s, p50/p99,
errors, wrong answers) with the CPU readings taken over it (server and client
CPU per call, cores other processes took) and the server's RSS; `medians`
across rounds; `rounds`, which measures rounds and measures a disturbed one
again; `table`, a Markdown table as pasted into docs/performance*.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from harness import machine

NAN = float("nan")
T = TypeVar("T")


def pct(values: Sequence[float] | Any, q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    data = np.asarray(values, dtype=np.float64)
    return float(np.percentile(data, q)) if data.size else NAN


def median(values: Sequence[float] | Any) -> float:
    return pct(values, 50)


def ratio(a: float, b: float) -> float:
    return a / b if b else NAN


def fmt(value: float | int | str, digits: int = 2) -> str:
    if isinstance(value, str | int):
        return str(value)
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN: "-"


@dataclass(frozen=True, slots=True)
class Figures:
    """One window of calls (or the medians of several)."""

    seconds: float
    calls: int  # that succeeded in the window
    errors: int  # calls that failed
    wrong: int  # answers whose output differs from the expected one
    req_s: float
    p50_ms: float
    p99_ms: float
    server_us_per_call: float = NAN  # server CPU (every thread) / calls
    client_us_per_call: float = NAN  # CPU of the client processes / calls
    others_cores: float = 0.0  # mean cores every other process took (a noisy neighbour)
    rss_mb: float = NAN  # the server's VmRSS at the end of the window

    @property
    def server_cores(self) -> float:
        """Mean CPU cores the server used in the window."""
        return self.server_us_per_call * self.req_s / 1e6

    @staticmethod
    def of(samples: Any, t0: float, t1: float, *, server_cpu_s: float = NAN,
           client_cpu_s: float = NAN, others_cores: float = 0.0, rss_mb: float = NAN
           ) -> Figures:
        """The calls of `samples` (clients.Samples) that ended in [t0, t1)."""
        window = samples.between(t0, t1)
        lat = window.latencies_ms()
        n = int(lat.size)
        return Figures(t1 - t0, n, window.failed, window.wrong, n / (t1 - t0), pct(lat, 50),
                       pct(lat, 99), server_cpu_s / n * 1e6 if n else NAN,
                       client_cpu_s / n * 1e6 if n else NAN, others_cores, rss_mb)


def medians(runs: Sequence[Figures]) -> Figures:
    """Each figure's median across runs; errors and wrong answers: their sum."""
    values = {f.name: [getattr(r, f.name) for r in runs] for f in fields(Figures)}
    out: dict[str, Any] = {k: sum(v) if k in ("errors", "wrong") else median(v)
                           for k, v in values.items()}
    return Figures(**{**out, "calls": int(out["calls"])})


def rounds(count: int, args: argparse.Namespace, one: Callable[[int], list[T]],
           others: Callable[[T], float]) -> tuple[list[T], list[T]]:
    """Rounds 1..count of `one`, each after waiting up to --wait-idle s for an idle
    machine; a round in which other processes took more than --max-others cores (by
    `others` of any of its results) is measured again, --retries times at most in
    all. Returns (kept, dropped) results."""
    kept: list[T] = []
    dropped: list[T] = []
    retries, number = args.retries, 1
    while number <= count:
        machine.wait_idle(args.wait_idle)
        results = one(number)
        if any(others(r) > args.max_others for r in results) and retries > 0:
            retries -= 1
            dropped += results
            print(f"  round {number} disturbed by other processes; measured again", flush=True)
            continue
        kept += results
        number += 1
    return kept, dropped


def round_label(number: int, others: float, max_others: float, dropped: bool) -> str:
    if dropped:
        return f"{number} (disturbed, not counted)"
    return f"{number}" + (" (disturbed; retries spent)" if others > max_others else "")


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pasted as is into docs/performance*.md)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(f"\n{title}\n\n{line(headers)}\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(line(r) for r in cells))
    sys.stdout.flush()


def variant_table(title: str, runs: Sequence[Any], names: Sequence[str], *,
                  p99_digits: int = 3) -> Callable[[str, str], float]:
    """Print one row per variant (`names`, the first the reference) with the medians
    across `runs` (each with `.variant` and `.figures`) of req/s, p99 and server CPU
    per call, each with its ratio to the reference; returns `med(variant, figure)`."""
    def med(variant: str, what: str) -> float:
        return median([getattr(r.figures, what) for r in runs if r.variant == variant])

    rows = []
    for v in names:
        row: list[object] = [v]
        for what, digits in (("req_s", 0), ("p99_ms", p99_digits), ("server_us_per_call", 1)):
            row += [fmt(med(v, what), digits), fmt(ratio(med(v, what), med(names[0], what)))]
        rows.append(row)
    table(title, ["variant", "req/s", "x", "p99 ms", "x", "server CPU us/call", "x"], rows)
    return med
