"""Swap benchmark: load while swapping, rollback visibility, memory of warm versions.

This script owns the measurements of the design's "Swap" and "Memory" targets
(figures in docs/performance-lifecycle.md):

- load: 2 client processes x 8 calls in flight of `tiny` batch 1 (all ones;
  every answer checked against the weights of the version it names) for a
  window WITHOUT swaps, then one WITH an Activate(1) / Rollback alternating
  every 0.5 s; the order flips every round (4 rounds of 5 s by default) and a
  disturbed round is measured again. Target: 0 errors, p99 with swaps <= 1.2x.
- rollback: one client calls `tiny` in a tight loop (1 call in flight) while 50
  Rollback RPCs are sent 0.2 s apart; per rollback, the time from sending it to
  the first answer from the version rolled back to, the RPC's round trip, the
  server's swap (SwapResponse.swap_us, target < 1 ms) and whole command
  (total_ms); and whether any call *sent* after the RPC returned was answered by
  the old version (target: none).
- blocked: the same Rollback while an Activate evicts a version busy with a long
  call (tiny 1 = slow_model, ~1 s a call, called by number).
- memory: large_model versions 1..3 (~100 MB each): the server's VmRSS with
  --warm-versions 1, 2 and 3 once 1, 2, 3 were activated in turn, as a ratio to
  --warm-versions 1 (target: 2 warm <= 2.1x); then 200 Load/Unload cycles of
  version 1 on the --warm-versions 2 server: RSS before, after, and its slope.

    python bench/swap.py [--quick] [--part load|rollback|blocked|memory ...]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from harness import machine, models, stats
from harness.clients import ClientPool, Plan, Samples, Workload
from harness.server import EventFollower, Sidecar, pb, scratch, tiny_repo, write_version
from harness.stats import fmt, median, ratio

BLOCKED_ROWS = 6000
MODEL = "tiny"
LARGE = "large"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--part", action="append", choices=("load", "rollback", "blocked", "memory"),
        help="run only this part (repeatable; default all)")
    add("--quick", action="store_true",
        help="a smoke test: no idle wait, no retries, 2 rounds of 2 s, 10 rollbacks,"
        " 1 blocked repeat, 20 cycles of 20 MB versions")
    add("--rounds", type=int, default=4, help="load: rounds of each phase (default 4)")
    add("--duration", type=float, default=5.0, help="load: seconds per phase (default 5)")
    add("--warmup", type=float, default=1.0, help="load: seconds of load before each window")
    add("--processes", type=int, default=2, help="load: client processes")
    add("--in-flight", type=int, default=8, help="load: calls in flight per client process")
    add("--swap-every", type=float, default=0.5, help="load: seconds between swaps")
    add("--rollbacks", type=int, default=50, help="rollback: Rollback RPCs (default 50)")
    add("--blocked-repeats", type=int, default=3, help="blocked: repeats (default 3)")
    add("--cycles", type=int, default=200, help="memory: Load/Unload cycles (default 200)")
    add("--megabytes", type=int, default=100, help="memory: size of each large_model version")
    machine.add_noise_args(parser, max_others=0.3, wait_idle=30.0, retries=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.rollbacks = 2, 2.0, 0.5, 10
        args.blocked_repeats, args.cycles, args.megabytes, args.retries = 1, 20, 20, 0
        args.wait_idle = 0.0
    return args


# ---- load with and without swaps -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    round: int
    swapping: bool
    figures: stats.Figures
    versions: dict[int, int]  # answers in the window by version
    swaps: int
    swap_failures: int
    first_error: str


def ensure_active(server: Sidecar, version: int) -> None:
    if server.model(MODEL).active.number != version:
        server.activate(MODEL, version)


def swap_until(server: Sidecar, start: float, end: float, every: float) -> tuple[int, int]:
    """Activate(1) and Rollback in turn, one every `every` s; (swaps done, RPCs failed)."""
    done = failed = k = 0
    while (due := start + k * every) < end:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            server.activate(MODEL, 1) if k % 2 == 0 else server.rollback(MODEL)
            done += 1
        except Exception as exc:
            failed += 1
            print(f"  swap {k} failed: {exc}")
        k += 1
    return done, failed


def phase(server: Sidecar, pool: ClientPool, args: argparse.Namespace, number: int,
          swapping: bool) -> Phase:
    ensure_active(server, 2)
    during = (lambda t0, t1: swap_until(server, t0, t1, args.swap_every)) if swapping else None
    w = pool.measure(server, args.warmup, args.duration,
                     in_flight=args.processes * args.in_flight, during=during)
    swaps, failed = w.during or (0, 0)
    return Phase(number, swapping, w.figures, w.samples.between(w.start, w.end).by_version(),
                 swaps, failed, w.samples.first_error)


def part_load(args: argparse.Namespace) -> None:
    print(f"\n## load: {args.processes} client processes x {args.in_flight} in flight,"
          f" {MODEL} batch 1; {args.rounds} rounds of {args.duration:g} s per phase,"
          f" swap every {args.swap_every:g} s")
    with scratch("lifecycle-swap-") as root, ClientPool(Workload(), args.processes) as pool:
        server = Sidecar(tiny_repo(root))
        events = EventFollower(server)
        try:
            kept, dropped = stats.rounds(
                args.rounds, args,
                # both phases, in an order that flips from round to round (no order bias)
                lambda n: [phase(server, pool, args, n, s) for s in (n % 2 == 0, n % 2 == 1)],
                lambda p: p.figures.others_cores)
            guard_events = [a.event for a in events.events if a.event.actor == "guard"]
        finally:
            events.close()
            server.stop()
    rows = []
    for p in kept + dropped:
        f = p.figures
        served = " ".join(f"v{v}:{n}" for v, n in sorted(p.versions.items()) if v > 0)
        rows.append([stats.round_label(p.round, f.others_cores, args.max_others, p in dropped),
                     "yes" if p.swapping else "no", fmt(f.req_s, 0), fmt(f.p50_ms),
                     fmt(f.p99_ms), f.errors, f.wrong, p.swaps, p.swap_failures, served,
                     fmt(f.others_cores)])
    stats.table("Each phase (client side; others: CPU cores used by other processes)",
                ["round", "swaps", "req/s", "p50 ms", "p99 ms", "errors", "wrong",
                 "swaps done", "swap RPCs failed", "answers by version", "others"], rows)
    for p in kept + dropped:
        if p.first_error:
            print(f"round {p.round} swaps={p.swapping}: first error: {p.first_error}")

    def pick(swapping: bool, what: str) -> float:
        return median([getattr(p.figures, what) for p in kept if p.swapping == swapping])

    p99 = {(p.round, p.swapping): p.figures.p99_ms for p in kept}
    per_round = ", ".join(fmt(ratio(p99[n, True], p99[n, False]))
                          for n in sorted({p.round for p in kept}))
    stats.table("Load with swaps vs without (medians across rounds)",
                ["figure", "without swaps", "with swaps", "with/without", "target"],
                [*([label, fmt(pick(False, what), d), fmt(pick(True, what), d),
                    fmt(ratio(pick(True, what), pick(False, what))), target]
                   for label, what, d, target in (("req/s", "req_s", 0, ""),
                                                  ("p50 ms", "p50_ms", 2, ""),
                                                  ("p99 ms", "p99_ms", 2, "<= 1.2x"))),
                 ["errors + wrong answers (with swaps)", "",
                  sum(p.figures.errors + p.figures.wrong for p in kept if p.swapping), "",
                  "0"]])
    print(f"p99 ratio per round: {per_round}")
    print(f"guard actions during the run: {len(guard_events)}"
          + "".join(f"\n  {e.action} {e.from_version.number}->{e.to_version.number}: {e.reason}"
                    for e in guard_events))


# ---- rollback visibility ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    sent: float
    returned: float
    response: Any  # the SwapResponse


def part_rollback(args: argparse.Namespace) -> None:
    every = 0.2
    print(f"\n## rollback: {args.rollbacks} Rollback RPCs {every:g} s apart; one client in a"
          " tight loop (1 call in flight)")
    with scratch("lifecycle-rollback-") as root, ClientPool(Workload()) as pool:
        server = Sidecar(tiny_repo(root))
        try:
            ensure_active(server, 2)
            machine.wait_idle(args.wait_idle)
            begin = time.monotonic() + 0.2
            start = begin + 1.0
            pool.start(server.address, Plan(begin, start + args.rollbacks * every + 1.0))
            timings = []
            for k in range(args.rollbacks):
                time.sleep(max(0.0, start + k * every - time.monotonic()))
                sent = time.monotonic()
                response = server.rollback(MODEL)
                timings.append(Timing(sent, time.monotonic(), response))
            time.sleep(0.3)
            pool.stop_event.set()
            samples = pool.collect()
        finally:
            server.stop()
    report_rollbacks(timings, samples)


def report_rollbacks(timings: list[Timing], samples: Samples) -> None:
    visible, stale, missing = [], 0, 0
    for k, t in enumerate(timings):
        until = timings[k + 1].sent if k + 1 < len(timings) else float("inf")
        after = samples.between(t.sent, until)
        hits = np.flatnonzero(after.version == t.response.to_version.number)
        if hits.size == 0:
            missing += 1
        else:
            visible.append((after.done[hits[0]] - t.sent) * 1e3)
        stale += int(np.count_nonzero((after.started > t.returned)
                                      & (after.version == t.response.from_version.number)))

    def row(name: str, values: Sequence[float] | Any, unit: str, target: str = "") -> list[str]:
        return [name, unit, *(fmt(stats.pct(values, q), 3) for q in (50, 90, 99, 100)), target]

    stats.table(f"Rollback ({len(timings)} RPCs; client calls in the run: {samples.count},"
                f" failed: {samples.failed}, wrong: {samples.wrong})",
                ["figure", "unit", "p50", "p90", "p99", "max", "target"], [
                    row("RPC sent -> first answer from the version rolled back to", visible,
                        "ms"),
                    row("Rollback RPC round trip", [(t.returned - t.sent) * 1e3
                                                    for t in timings], "ms"),
                    row("swap inside the server (SwapResponse.swap_us)",
                        [t.response.swap_us for t in timings], "us", "< 1,000 us"),
                    row("whole command inside the server (total_ms)",
                        [t.response.total_ms for t in timings], "ms"),
                    row("one inference call of the tight-loop client", samples.latencies_ms(),
                        "ms")])
    print(f"calls sent after a Rollback RPC returned but answered by the old version: {stale}"
          f" (target 0); rollbacks with no answer from the new version before the next: "
          f"{missing}")


# ---- rollback while an Activate drains the version it evicts -------------------------


def blocked_once(server: Sidecar, pool: ClientPool) -> list[str]:
    """Active 3, previous 1 busy with a long call; Activate(2) evicts 1; Rollback 50 ms
    later. Returns the row: Activate RPC ms, its swap_us, Rollback RPC ms, its total_ms,
    and what the long call on the evicted version still had to run (ms)."""
    server.activate(MODEL, 1)
    server.rollback(MODEL)  # active 3, previous 1 (loaded again: fresh statistics)
    now = time.monotonic()
    # One long call (the workers' unrecorded first call): it runs inline on the server's
    # loop, as the first call of a fresh version does, and moves the version's mean
    # compute time up, so the measured calls below run in the inference pool.
    pool.run(server.address, Plan(now, now))
    begin = time.monotonic() + 0.1
    pool.start(server.address, Plan(begin, begin + 60))
    time.sleep(1.5)  # the unrecorded first call (~1 s) ended; a recorded one is running
    result: dict[str, float] = {}

    def activate_2() -> None:
        t0 = time.monotonic()
        result["swap_us"] = server.activate(MODEL, 2).swap_us
        result["activate_ms"] = (time.monotonic() - t0) * 1e3

    thread = threading.Thread(target=activate_2)
    thread.start()
    time.sleep(0.05)
    sent = time.monotonic()
    response = server.rollback(MODEL)
    rollback_ms = (time.monotonic() - sent) * 1e3
    thread.join()
    pool.stop_event.set()
    samples = pool.collect()
    running = (samples.started < sent) & (samples.done > sent)
    left = (float(samples.done[running].max()) - sent) * 1e3 if running.any() else 0.0
    return [fmt(x, 0) for x in (result["activate_ms"], result["swap_us"], rollback_ms,
                                response.total_ms, left)]


def part_blocked(args: argparse.Namespace) -> None:
    print("\n## rollback while an Activate drains the version it evicts: tiny 1 is"
          f" slow_model (~1 s per call of {BLOCKED_ROWS} rows), called in a loop by version;"
          " Activate(2) evicts it; a Rollback is sent 50 ms after the Activate")
    workload = Workload(version="1", rows=BLOCKED_ROWS, check=False)
    with scratch("lifecycle-blocked-") as root, ClientPool(workload) as pool:
        repo = root / "repo"  # tiny 1 = slow_model (a long call takes ~1 s), 2 and 3 = tiny
        write_version(repo, MODEL, 1, models.slow_model(1, layers=64, width=512))
        for v in (2, 3):
            write_version(repo, MODEL, v, models.tiny_model(v))
        server = Sidecar(repo, "--no-watch")
        try:
            rows = [[k + 1, *blocked_once(server, pool)] for k in range(args.blocked_repeats)]
        finally:
            server.stop()
    stats.table("Rollback behind an Activate that drains the evicted version (ms)",
                ["repeat", "Activate RPC", "Activate swap_us", "Rollback RPC",
                 "Rollback total_ms (server)", "long call still running for"], rows)
    print("A Rollback that waits as long as the drain is not 'instant': see"
          " docs/performance-lifecycle.md, findings.")


# ---- memory ----------------------------------------------------------------------------


def settled_rss(server: Sidecar, seconds: float = 1.0) -> float:
    """RSS after `seconds` (drains, unloads and the allocator settle)."""
    time.sleep(seconds)
    return server.rss_mb()


def loaded(server: Sidecar) -> str:
    return ",".join(str(v) for v in sorted(int(v) for v in server.model(LARGE).loaded_versions))


def part_memory(args: argparse.Namespace) -> None:
    print(f"\n## memory: large_model versions 1..3 of ~{args.megabytes} MB each")
    rows: list[list[Any]] = []  # warm, loaded at start, RSS at start, loaded full, RSS full
    with scratch("lifecycle-memory-") as root:
        base = Sidecar(tiny_repo(root / "tiny"))
        base_rss = settled_rss(base)
        base.stop()
        repo = root / "repo"
        for v in (1, 2, 3):
            size = write_version(repo, LARGE, v, models.large_model(v, megabytes=args.megabytes)
                                 ).stat().st_size / 2**20
        for warm in (1, 2, 3):
            machine.wait_idle(args.wait_idle)
            server = Sidecar(repo, "--warm-versions", str(warm))
            try:
                row: list[Any] = [warm, loaded(server), settled_rss(server)]
                for v in (1, 2, 3):
                    server.activate(LARGE, v)
                rows.append([*row, loaded(server), settled_rss(server)])
                if warm == 2:
                    before = server.rss_mb()
                    trace = []
                    for _ in range(args.cycles):  # version 1: neither active nor previous
                        for rpc, req in (("Load", pb.LoadRequest), ("Unload", pb.UnloadRequest)):
                            getattr(server.control(), rpc)(
                                req(model=LARGE, version="1", actor="bench"), timeout=120)
                        trace.append(server.rss_mb())
                    trace.append(settled_rss(server))
            finally:
                server.stop()
    one = rows[0][4]
    stats.table(f"Server RSS in MiB (model file {size:.0f} MiB; a server serving only tiny:"
                f" {base_rss:.0f} MiB). 'full': after activating 1, 2, 3 in turn; ratios to"
                " --warm-versions 1 'full' (one version loaded)",
                ["--warm-versions", "loaded at start", "RSS at start", "loaded full",
                 "RSS full", "x one", "x one (minus base)", "target"],
                [[w, at_start, fmt(rss0, 0), full, fmt(rss, 0), fmt(ratio(rss, one)),
                  fmt(ratio(rss - base_rss, one - base_rss)), "<= 2.1x" if w == 2 else ""]
                 for w, at_start, rss0, full, rss in rows])
    n = len(trace) - 1
    x, y = np.arange(1, n + 1, dtype=np.float64), np.asarray(trace[:n], dtype=np.float64)
    half = n // 2

    def slope(a: Any, b: Any) -> float:
        return float(np.polyfit(a, b, 1)[0]) * 100 if len(a) > 1 else float("nan")

    stats.table(f"RSS across {n} Load/Unload cycles of one version (--warm-versions 2, "
                "versions 3 active and 2 previous stay loaded)", ["point", "RSS MiB"],
                [["before", fmt(before, 1)],
                 *[[f"after cycle {m}", fmt(trace[m - 1], 1)]
                   for m in sorted({1, 10, half, n} & set(range(1, n + 1)))],
                 ["1 s after the last cycle", fmt(trace[-1], 1)],
                 ["after - before", fmt(trace[-1] - before, 1)],
                 ["slope, all cycles (MiB per 100 cycles)", fmt(slope(x, y))],
                 [f"slope, cycles {half + 1}-{n} (MiB per 100 cycles)",
                  fmt(slope(x[half:], y[half:]))]])


def main(argv: Sequence[str] | None = None) -> int:
    return machine.run_parts({"load": part_load, "rollback": part_rollback,
                              "blocked": part_blocked, "memory": part_memory},
                             parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
