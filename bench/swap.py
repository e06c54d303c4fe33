"""Swap benchmark: load while swapping, rollback visibility, memory of warm versions.

This script owns the measurements of the design's "Swap" and "Memory" targets
(figures in docs/performance-lifecycle.md):

- load: 2 client processes x 8 calls in flight of `tiny` batch 1 (INPUT0 FP32
  [1, 4], all ones; every answer checked against the weights of the version it
  names) for a fixed time WITHOUT swaps, then the same WITH an Activate(1) /
  Rollback pair alternating every 0.5 s; phases alternate (4 rounds of 5 s each
  by default, the order flipped every round) so drift of a noisy machine hits
  both; a round in which other processes took more than --max-others CPU cores
  is measured again (at most --retries times) and shown as disturbed.
  Target: 0 errors, p99 with swaps <= 1.2x without.
- rollback: one client calls `tiny` in a tight loop (1 call in flight) while
  the script sends 50 Rollback RPCs 0.2 s apart; for each, the time from sending
  the RPC to the first answer that names the version rolled back to, the RPC's
  round trip, and the server's own swap time (SwapResponse.swap_us, target
  < 1 ms); and whether any call *sent* after the RPC returned was still answered
  by the old version (target: none: "visible to the next request").
- blocked: the same Rollback while an Activate is evicting a version that is
  busy with a long call (tiny 1 = slow_model, ~1 s per call, called by version
  number): how long the Activate and the Rollback RPCs take, against how long
  the long call still had to run.
- memory: a repository of large_model versions 1..3 (~100 MB each, written to a
  temporary directory): the server's VmRSS with --warm-versions 1, 2 and 3 once
  versions 1, 2, 3 were activated in turn (so each warm set is full), as a ratio
  to the --warm-versions 1 server after the same activations ("one": exactly one
  version loaded). Target: 2 warm <= 2.1x. Then 200 Load/Unload cycles of
  version 1 on the --warm-versions 2 server: RSS before and after, and its
  slope (target: flat).

    python bench/swap.py [--quick] [--part load|rollback|blocked|memory ...]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    ClientPool,
    CpuMeter,
    EventFollower,
    LoadFigures,
    Plan,
    RequestSpec,
    Samples,
    Sidecar,
    activate,
    active_version,
    describe_machine,
    fmt,
    loaded_versions,
    make_models,
    median,
    pb,
    pct,
    print_table,
    ratio,
    rollback,
    scratch,
    tiny_repo,
    wait_idle,
    write_version,
)

PARTS = ("load", "rollback", "blocked", "memory")
BLOCKED_ROWS = 6000
MODEL = "tiny"
LARGE = "large"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--part", action="append", choices=PARTS,
                        help="run only this part (repeatable; default all)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter: 2 rounds of 3 s, 20 rollbacks, 2 blocked repeats, 40 cycles")
    parser.add_argument("--rounds", type=int, default=4,
                        help="load: rounds of each phase (default 4)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="load: measured seconds per phase (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="load: seconds of load before each measured window")
    parser.add_argument("--processes", type=int, default=2, help="load: client processes")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="load: calls in flight per client process")
    parser.add_argument("--swap-every", type=float, default=0.5,
                        help="load: seconds between swaps (default 0.5)")
    parser.add_argument("--max-others", type=float, default=0.3, metavar="CORES",
                        help="load: a round in which other processes used more CPU cores"
                        " than this is measured again (default 0.3)")
    parser.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                        help="before each round, wait up to S s for an idle machine (default"
                        " 30; 0: do not wait)")
    parser.add_argument("--retries", type=int, default=2,
                        help="load: disturbed rounds measured again, at most (default 2)")
    parser.add_argument("--rollbacks", type=int, default=50,
                        help="rollback: Rollback RPCs measured (default 50)")
    parser.add_argument("--blocked-repeats", type=int, default=3,
                        help="blocked: repeats (default 3)")
    parser.add_argument("--cycles", type=int, default=200,
                        help="memory: Load/Unload cycles (default 200)")
    parser.add_argument("--megabytes", type=int, default=100,
                        help="memory: size of each large_model version (default 100)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.rollbacks, args.cycles = 2, 3.0, 20, 40
        args.blocked_repeats = 2
    return args


# ---- (a) load with and without swaps ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseResult:
    round: int
    swapping: bool
    figures: LoadFigures
    versions: dict[int, int]
    swaps: int
    swap_failures: int
    first_error: str
    others_cores: float


def ensure_active(server: Sidecar, version: int) -> None:
    if active_version(server, MODEL) != version:
        activate(server, MODEL, version)


def swap_until(server: Sidecar, start: float, end: float, every: float) -> tuple[int, int]:
    """Activate(1) and Rollback alternately, one every `every` s from `start`;
    returns (swaps done, swap RPCs that failed)."""
    done = failed = 0
    k = 0
    while (due := start + k * every) < end:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            if k % 2 == 0:
                activate(server, MODEL, 1)
            else:
                rollback(server, MODEL)
            done += 1
        except Exception as exc:
            failed += 1
            print(f"  swap {k} failed: {exc}")
        k += 1
    return done, failed


def run_phase(server: Sidecar, pool: ClientPool, args: argparse.Namespace, number: int,
              swapping: bool) -> PhaseResult:
    ensure_active(server, 2)
    begin = time.monotonic() + 0.2
    measure = begin + args.warmup
    end = measure + args.duration
    pool.start(server.address, Plan(begin, end, in_flight=args.in_flight))
    time.sleep(max(0.0, measure - time.monotonic()))
    meter = CpuMeter([server.pid, *pool.pids, os.getpid()])
    swaps = failed = 0
    if swapping:
        swaps, failed = swap_until(server, measure, end, args.swap_every)
    time.sleep(max(0.0, end - time.monotonic()))
    _, others = meter.stop()
    samples = pool.collect()
    window = samples.between(measure, end)
    return PhaseResult(number, swapping, LoadFigures.of(samples, measure, end),
                       window.by_version(), swaps, failed, samples.first_error, others)


def run_round(server: Sidecar, pool: ClientPool, args: argparse.Namespace, number: int
              ) -> list[PhaseResult]:
    """Both phases; the order alternates from round to round (no order bias)."""
    order = (False, True) if number % 2 else (True, False)
    return [run_phase(server, pool, args, number, swapping) for swapping in order]


def disturbed(results: list[PhaseResult], max_others: float) -> bool:
    return any(r.others_cores > max_others for r in results)


def part_load(args: argparse.Namespace) -> None:
    print(f"\n## load: {args.processes} client processes x {args.in_flight} in flight, "
          f"{MODEL} batch 1; {args.rounds} rounds of {args.duration:g} s per phase, "
          f"swap every {args.swap_every:g} s")
    kept: list[PhaseResult] = []
    dropped: list[PhaseResult] = []
    with scratch("lifecycle-swap-") as root:
        server = Sidecar(tiny_repo(root))
        events = EventFollower(server)
        pool = ClientPool(RequestSpec(model=MODEL), args.processes)
        try:
            retries = args.retries
            number = 1
            while number <= args.rounds:
                wait_idle(args.wait_idle)
                results = run_round(server, pool, args, number)
                if disturbed(results, args.max_others) and retries > 0:
                    retries -= 1
                    dropped += results
                    print(f"  round {number} disturbed by other processes; measured again")
                    continue
                kept += results
                number += 1
            guard_events = [a.event for a in events.events if a.event.actor == "guard"]
        finally:
            pool.close()
            events.close()
            server.stop()
    print_phases(kept, dropped, args.max_others)
    summarize_load(kept, guard_events)


def print_phases(results: list[PhaseResult], dropped: list[PhaseResult], max_others: float
                 ) -> None:
    rows = []
    for r in results + dropped:
        f = r.figures
        served = " ".join(f"v{v}:{n}" for v, n in sorted(r.versions.items()) if v > 0)
        label = str(r.round)
        if r in dropped:
            label += " (disturbed, not counted)"
        elif r.others_cores > max_others:
            label += " (disturbed; retries spent)"
        rows.append([label, "yes" if r.swapping else "no", fmt(f.rps, 0), fmt(f.p50_ms),
                     fmt(f.p99_ms), f.errors, f.wrong, r.swaps, r.swap_failures, served,
                     fmt(r.others_cores)])
    print_table("Each phase (client side; others: CPU cores used by other processes)",
                ["round", "swaps", "req/s", "p50 ms", "p99 ms", "errors", "wrong", "swaps done",
                 "swap RPCs failed", "answers by version", "others"], rows)
    for r in results + dropped:
        if r.first_error:
            print(f"round {r.round} swaps={r.swapping}: first error: {r.first_error}")


def summarize_load(results: list[PhaseResult], guard_events: list[Any]) -> None:
    def pick(swapping: bool, what: str) -> float:
        return median([getattr(r.figures, what) for r in results if r.swapping == swapping])

    errors = sum(r.figures.errors + r.figures.wrong for r in results if r.swapping)
    by_round: dict[int, dict[bool, float]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.swapping] = r.figures.p99_ms
    per_round = ", ".join(fmt(ratio(p[True], p[False])) for p in by_round.values())
    rows = [[label, fmt(pick(False, what), digits), fmt(pick(True, what), digits),
             fmt(ratio(pick(True, what), pick(False, what))), target]
            for label, what, digits, target in (
                ("req/s", "rps", 0, ""),
                ("p50 ms", "p50_ms", 2, ""),
                ("p99 ms", "p99_ms", 2, "<= 1.2x"))]
    rows.append(["errors + wrong answers (with swaps)", "", str(errors), "", "0"])
    print_table("Load with swaps vs without (medians across rounds)",
                ["figure", "without swaps", "with swaps", "with/without", "target"], rows)
    print(f"p99 ratio per round: {per_round}")
    print(f"guard actions during the run: {len(guard_events)}"
          + "".join(f"\n  {e.action} {e.from_version.number}->{e.to_version.number}: {e.reason}"
                    for e in guard_events))


# ---- (b) rollback visibility -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollbackTiming:
    sent: float
    returned: float
    from_version: int
    to_version: int
    swap_us: float
    total_ms: float


def part_rollback(args: argparse.Namespace) -> None:
    every = 0.2
    print(f"\n## rollback: {args.rollbacks} Rollback RPCs {every:g} s apart; one client in a"
          " tight loop (1 call in flight)")
    with scratch("lifecycle-rollback-") as root:
        server = Sidecar(tiny_repo(root))
        pool = ClientPool(RequestSpec(model=MODEL), 1)
        try:
            ensure_active(server, 2)
            wait_idle(args.wait_idle)
            begin = time.monotonic() + 0.2
            start = begin + 1.0
            pool.start(server.address, Plan(begin, start + args.rollbacks * every + 1.0))
            timings = rollbacks_at(server, start, every, args.rollbacks)
            time.sleep(0.3)
            pool.stop_event.set()
            samples = pool.collect()
        finally:
            pool.close()
            server.stop()
    report_rollbacks(timings, samples)


def rollbacks_at(server: Sidecar, start: float, every: float, n: int) -> list[RollbackTiming]:
    timings = []
    for k in range(n):
        time.sleep(max(0.0, start + k * every - time.monotonic()))
        sent = time.monotonic()
        response = rollback(server, MODEL)
        returned = time.monotonic()
        timings.append(RollbackTiming(sent, returned, response.from_version.number,
                                      response.to_version.number, response.swap_us,
                                      response.total_ms))
    return timings


def report_rollbacks(timings: list[RollbackTiming], samples: Samples) -> None:
    visible, stale, missing = [], 0, 0
    for k, t in enumerate(timings):
        until = timings[k + 1].sent if k + 1 < len(timings) else float("inf")
        after = samples.between(t.sent, until)
        hits = np.flatnonzero(after.version == t.to_version)
        if hits.size == 0:
            missing += 1
        else:
            visible.append((after.done[hits[0]] - t.sent) * 1e3)
        sent_after = (after.started > t.returned) & (after.version == t.from_version)
        stale += int(np.count_nonzero(sent_after))
    rtt = [(t.returned - t.sent) * 1e3 for t in timings]
    calls = samples.latencies_ms()

    def row(name: str, values: Sequence[float] | Any, unit: str, target: str = "") -> list[str]:
        return [name, unit, fmt(pct(values, 50), 3), fmt(pct(values, 90), 3),
                fmt(pct(values, 99), 3), fmt(float(np.max(values)) if len(values) else
                                             float("nan"), 3), target]

    print_table(f"Rollback ({len(timings)} RPCs; client calls in the run: {samples.count},"
                f" failed: {samples.failed}, wrong: {samples.wrong})",
                ["figure", "unit", "p50", "p90", "p99", "max", "target"], [
                    row("RPC sent -> first answer from the version rolled back to", visible,
                        "ms"),
                    row("Rollback RPC round trip", rtt, "ms"),
                    row("swap inside the server (SwapResponse.swap_us)",
                        [t.swap_us for t in timings], "us", "< 1,000 us"),
                    row("whole command inside the server (total_ms)",
                        [t.total_ms for t in timings], "ms"),
                    row("one inference call of the tight-loop client", calls, "ms"),
                ])
    print(f"calls sent after a Rollback RPC returned but answered by the old version: {stale}"
          f" (target 0); rollbacks with no answer from the new version before the next: "
          f"{missing}")


# ---- (b2) rollback while an Activate drains the version it evicts ---------------------


@dataclass(frozen=True, slots=True)
class Blocked:
    activate_ms: float  # the Activate RPC, client side
    activate_swap_us: float
    rollback_ms: float  # the Rollback RPC sent 50 ms after the Activate, client side
    rollback_total_ms: float  # ... inside the server (lock wait included)
    long_left_ms: float  # what the long call on the evicted version had left then


def blocked_repo(root: Path) -> Path:
    """tiny 1 = slow_model (a long call takes ~1 s), 2 and 3 = tiny_model."""
    mm = make_models()
    repo = root / "repo"
    write_version(repo, MODEL, 1, mm.slow_model(1, layers=64, width=512))
    for v in (2, 3):
        write_version(repo, MODEL, v, mm.tiny_model(v))
    return repo


def blocked_once(server: Sidecar, pool: ClientPool) -> Blocked:
    """Active 3, previous 1 busy with a long call; Activate(2) evicts 1; Rollback 50 ms later."""
    activate(server, MODEL, 1)
    rollback(server, MODEL)  # active 3, previous 1 (loaded again: fresh statistics)
    now = time.monotonic()
    # One long call (the workers' unrecorded first call): it runs inline on the server's
    # loop, as the first call of a fresh version does, and moves the version's mean
    # compute time up, so the measured calls below run in the inference pool.
    pool.run(server.address, Plan(now, now))
    begin = time.monotonic() + 0.1
    pool.start(server.address, Plan(begin, begin + 60))
    time.sleep(1.5)  # the unrecorded first call (~1 s) ended; a recorded one is running
    result: dict[str, Any] = {}

    def activate_2() -> None:
        t0 = time.monotonic()
        result["swap_us"] = activate(server, MODEL, 2).swap_us
        result["activate_ms"] = (time.monotonic() - t0) * 1e3

    thread = threading.Thread(target=activate_2)
    thread.start()
    time.sleep(0.05)
    sent = time.monotonic()
    response = rollback(server, MODEL)
    rollback_ms = (time.monotonic() - sent) * 1e3
    thread.join()
    pool.stop_event.set()
    samples = pool.collect()
    running = (samples.started < sent) & (samples.done > sent)
    left = (float(samples.done[running].max()) - sent) * 1e3 if running.any() else 0.0
    return Blocked(result["activate_ms"], result["swap_us"], rollback_ms, response.total_ms,
                   left)


def part_blocked(args: argparse.Namespace) -> None:
    print("\n## rollback while an Activate drains the version it evicts: tiny 1 is"
          f" slow_model (~1 s per call of {BLOCKED_ROWS} rows), called in a loop by version;"
          " Activate(2) evicts it; a Rollback is sent 50 ms after the Activate")
    with scratch("lifecycle-blocked-") as root:
        server = Sidecar(blocked_repo(root), "--no-watch")
        pool = ClientPool(RequestSpec(model=MODEL, version="1", rows=BLOCKED_ROWS,
                                      check=False), 1)
        try:
            runs = [blocked_once(server, pool) for _ in range(args.blocked_repeats)]
        finally:
            pool.close()
            server.stop()
    print_table("Rollback behind an Activate that drains the evicted version (ms)",
                ["repeat", "Activate RPC", "Activate swap_us", "Rollback RPC",
                 "Rollback total_ms (server)", "long call still running for"],
                [[k + 1, fmt(r.activate_ms, 0), fmt(r.activate_swap_us, 0),
                  fmt(r.rollback_ms, 0), fmt(r.rollback_total_ms, 0), fmt(r.long_left_ms, 0)]
                 for k, r in enumerate(runs)])
    print("A Rollback that waits as long as the drain is not 'instant': see"
          " docs/performance-lifecycle.md, findings.")


# ---- (c) memory --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryRow:
    warm: int
    rss_start: float
    rss_full: float
    loaded_start: list[int]
    loaded_full: list[int]


def write_large_repo(root: Path, megabytes: int) -> tuple[Path, float]:
    mm = make_models()
    repo = root / "repo"
    size = 0.0
    for v in (1, 2, 3):
        size = write_version(repo, LARGE, v, mm.large_model(v, megabytes=megabytes)
                             ).stat().st_size / 2**20
    return repo, size


def settled_rss(server: Sidecar, seconds: float = 1.0) -> float:
    """RSS after `seconds` (drains, unloads and the allocator settle)."""
    time.sleep(seconds)
    return server.rss_mb()


def measure_warm(repo: Path, warm: int) -> tuple[MemoryRow, Sidecar]:
    server = Sidecar(repo, "--warm-versions", str(warm))
    start = settled_rss(server)
    loaded_start = loaded_versions(server, LARGE)
    for v in (1, 2, 3):
        activate(server, LARGE, v)
    full = settled_rss(server)
    return MemoryRow(warm, start, full, loaded_start, loaded_versions(server, LARGE)), server


def cycles(server: Sidecar, n: int) -> list[float]:
    """Load then Unload version 1 (neither active nor previous) n times; RSS after each."""
    stub = server.control()
    rss = []
    for _ in range(n):
        stub.Load(pb().LoadRequest(model=LARGE, version="1", actor="bench"), timeout=120)
        stub.Unload(pb().UnloadRequest(model=LARGE, version="1", actor="bench"), timeout=120)
        rss.append(server.rss_mb())
    return rss


def part_memory(args: argparse.Namespace) -> None:
    print(f"\n## memory: large_model versions 1..3 of ~{args.megabytes} MB each")
    with scratch("lifecycle-memory-") as root:
        base = Sidecar(tiny_repo(root / "tiny"))
        base_rss = settled_rss(base)
        base.stop()
        repo, size = write_large_repo(root, args.megabytes)
        rows: list[MemoryRow] = []
        trace: list[float] = []
        before = 0.0
        for warm in (1, 2, 3):
            wait_idle(args.wait_idle)
            row, server = measure_warm(repo, warm)
            rows.append(row)
            try:
                if warm == 2:
                    before = server.rss_mb()
                    trace = cycles(server, args.cycles)
                    trace.append(settled_rss(server))
            finally:
                server.stop()
    report_memory(rows, base_rss, size)
    report_cycles(before, trace)


def report_memory(rows: list[MemoryRow], base_rss: float, size: float) -> None:
    one = rows[0].rss_full
    table = []
    for r in rows:
        target = "<= 2.1x" if r.warm == 2 else ""
        table.append([r.warm, ",".join(map(str, r.loaded_start)), fmt(r.rss_start, 0),
                      ",".join(map(str, r.loaded_full)), fmt(r.rss_full, 0),
                      fmt(ratio(r.rss_full, one)),
                      fmt(ratio(r.rss_full - base_rss, one - base_rss)), target])
    print_table(f"Server RSS in MiB (model file {size:.0f} MiB; a server serving only tiny:"
                f" {base_rss:.0f} MiB). 'full': after activating 1, 2, 3 in turn; ratios to"
                " --warm-versions 1 'full' (one version loaded)",
                ["--warm-versions", "loaded at start", "RSS at start", "loaded full",
                 "RSS full", "x one", "x one (minus base)", "target"], table)


def report_cycles(before: float, trace: list[float]) -> None:
    if not trace:
        return
    n = len(trace) - 1
    x = np.arange(1, n + 1, dtype=np.float64)
    y = np.asarray(trace[:n], dtype=np.float64)
    slope_all = float(np.polyfit(x, y, 1)[0]) * 100 if n > 1 else float("nan")
    half = n // 2
    slope_late = float(np.polyfit(x[half:], y[half:], 1)[0]) * 100 if n - half > 1 else \
        float("nan")
    marks = sorted({1, 10, n // 2, n} & set(range(1, n + 1)))
    print_table(f"RSS across {n} Load/Unload cycles of one version (--warm-versions 2, "
                "versions 3 active and 2 previous stay loaded)",
                ["point", "RSS MiB"],
                [["before", fmt(before, 1)],
                 *[[f"after cycle {m}", fmt(trace[m - 1], 1)] for m in marks],
                 ["1 s after the last cycle", fmt(trace[-1], 1)],
                 ["after - before", fmt(trace[-1] - before, 1)],
                 ["slope, all cycles (MiB per 100 cycles)", fmt(slope_all)],
                 [f"slope, cycles {half + 1}-{n} (MiB per 100 cycles)", fmt(slope_late)]])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = args.part or list(PARTS)
    print(describe_machine())
    started = time.monotonic()
    if "load" in parts:
        part_load(args)
    if "rollback" in parts:
        part_rollback(args)
    if "blocked" in parts:
        part_blocked(args)
    if "memory" in parts:
        part_memory(args)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
