"""Guard benchmark: how fast a bad version is rolled back, and what the guard costs.

This script owns the measurements of the design's "Guard" target (a version
failing >= 20 % of requests is rolled back within 200 requests or 2 s at
>= 50 req/s) and of the guard's cost on the request path (figures in
docs/performance-lifecycle.md).

- detection: a server (--no-watch) serves `tiny` version 2 (version 1 on disk)
  under a client load of about 20 and 200 calls/s (open loop: calls start on a
  fixed schedule whether or not earlier ones returned) and as fast as 16 calls in
  flight allow (closed loop; the achieved rate is reported). buggy_model fails
  a call with any row whose first value is > 0, so the inputs set the share
  of calls that fail: 4 rows of random normal values fail ~94 % of calls
  (1 - 0.5^4: "most requests fail", the consecutive-failures rule's case), 1 row
  of random normal values minus 0.8416 fails ~20 % (the design's threshold
  case, for the error-ratio rule). Then buggy_model is written as version 3
  and activated by RPC (force: the guard quarantines it each time); the script
  waits for the guard's `rollback` event on WatchEvents and counts what the
  clients saw. Repeated (--repeats) with the guard's cooldown_s set to 0 by
  SetGuard.
- hot path: req/s, p99 and server CPU per call of one client process with 16
  calls in flight (tiny batch 1) against a fresh server with --no-guard, with the
  guard on and the version trusted (served since startup: outcomes recorded,
  not judged), and with the guard on and the version on probation (activated
  by command: every outcome judged); the order rotates each round.

    python bench/guard.py [--quick] [--part detection|hotpath ...]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import machine, models, stats
from harness.clients import ClientPool, Plan, Samples, Workload
from harness.server import EventFollower, Sidecar, pb, scratch, tiny_repo, write_version
from harness.stats import fmt

MODEL = "tiny"
BAD = 3
EVENT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Load:
    title: str
    rate: float  # open loop calls/s; 0: closed loop
    in_flight: int = 1


@dataclass(frozen=True, slots=True)
class Failing:
    title: str
    rows: int
    shift: float  # added to the N(0, 1) inputs; P(x > -shift) of rows fail


FAILING = (Failing("~94 %", 4, 0.0), Failing("~20 %", 1, -0.8416))
LOADS = (Load("~20 req/s (open loop)", 20.0), Load("~200 req/s (open loop)", 200.0),
         Load("max (closed loop, 16 in flight)", 0.0, 16))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--part", action="append", choices=("detection", "hotpath"),
        help="run only this part (repeatable; default both)")
    add("--quick", action="store_true",
        help="a smoke test: no idle wait, no retries, 1 detection repeat per load, 1 hot-path"
        " round of 2 s")
    add("--repeats", type=int, default=3, help="detection: bad activations per load")
    add("--rounds", type=int, default=3, help="hot path: rounds (default 3)")
    add("--duration", type=float, default=6.0, help="hot path: seconds per run (default 6)")
    add("--warmup", type=float, default=1.0, help="hot path: seconds of load before each")
    machine.add_noise_args(parser, max_others=0.3, wait_idle=30.0, retries=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds, args.duration, args.warmup, args.retries = 1, 1, 2.0, 0.5, 0
        args.wait_idle = 0.0
    return args


# ---- detection ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detection:
    load: str
    failing: str
    sent: float  # Activate RPC sent (monotonic)
    returned: float  # ... and returned
    total_ms: float  # the Activate command inside the server (SwapResponse.total_ms)
    rolled_back_at: float  # the guard's rollback event arrived; NaN: never
    server_ms: float  # rollback event time - activate event time (server clock)
    rule: str
    window: str  # the guard's window at its decision: failures / requests


def bad_activation(server: Sidecar, events: EventFollower, load: str, failing: str
                   ) -> Detection:
    mark = events.mark()
    sent = time.monotonic()
    total_ms = float(server.activate(MODEL, BAD, force=True).total_ms)
    returned = time.monotonic()
    back = events.wait(lambda e: e.action == "rollback" and e.actor == "guard"
                       and e.from_version.number == BAD, after=mark, timeout=EVENT_TIMEOUT_S)
    began = events.wait(lambda e: e.action == "activate" and e.to_version.number == BAD,
                        after=mark, timeout=1.0)
    if back is None or began is None:
        return Detection(load, failing, sent, returned, total_ms, float("nan"), float("nan"),
                         "none", "")
    details = back.event.details
    return Detection(load, failing, sent, returned, total_ms, back.at,
                     (back.event.time - began.event.time) * 1e3, details.get("rule", "?"),
                     f"{details.get('failures', '?')}/{details.get('requests', '?')}")


def detect_under(server: Sidecar, events: EventFollower, load: Load, failing: Failing,
                 args: argparse.Namespace) -> list[list[object]]:
    """`args.repeats` bad activations under one load; one table row each."""
    workload = Workload(rows=failing.rows, random=True, shift=failing.shift, check=False)
    with ClientPool(workload) as pool:
        meter = machine.CpuMeter([server.pid, *pool.pids, os.getpid()])
        begin = time.monotonic() + 0.2
        pool.start(server.address, Plan(begin, begin + 3600, in_flight=load.in_flight,
                                        rate=load.rate))
        time.sleep(1.7)  # load on version 2 before the first bad activation
        calm = (begin + 0.5, time.monotonic())
        found = []
        for _ in range(args.repeats):
            found.append(bad_activation(server, events, load.title, failing.title))
            time.sleep(1.0)  # version 2 serves again; in-flight calls end
        pool.stop_event.set()
        samples = pool.collect()
        others = meter.stop().others_cores
    rate = samples.between(*calm).count / (calm[1] - calm[0])
    return [detection_row(d, samples, found[k + 1].sent if k + 1 < len(found) else float("inf"),
                          rate, others, args.max_others) for k, d in enumerate(found)]


def detection_row(d: Detection, samples: Samples, until: float, rate: float, others: float,
                  max_others: float) -> list[object]:
    span = samples.between(d.sent, until)
    after_return = samples.between(d.returned, d.rolled_back_at).failed \
        if d.rolled_back_at == d.rolled_back_at else span.failed
    ms = (d.rolled_back_at - d.returned) * 1e3
    requests = span.failed + int(np.count_nonzero(span.version == BAD))
    worst = max(ms, d.server_ms)
    met = "yes" if worst == worst and (requests <= 200 or worst <= 2000) else "NO"
    return [d.failing, d.load, fmt(rate, 0),
            f"{fmt((d.returned - d.sent) * 1e3, 0)} ({fmt(d.total_ms, 0)})", fmt(ms, 0),
            fmt(d.server_ms, 0), requests, span.failed, after_return, d.rule, d.window,
            met + (" (below 50 req/s)" if rate < 50 else ""),
            fmt(others) + (" (disturbed)" if others > max_others else "")]


def part_detection(args: argparse.Namespace) -> None:
    print(f"\n## detection: buggy_model activated as version {BAD} over tiny version 2;"
          f" {args.repeats} repeats per load and share of failing calls")
    rows: list[list[object]] = []
    with scratch("lifecycle-guard-") as root:
        repo = tiny_repo(root)
        server = Sidecar(repo, "--no-watch")
        events = EventFollower(server)
        try:
            write_version(repo, MODEL, BAD, models.buggy_model(BAD))
            server.control().SetGuard(pb.SetGuardRequest(
                model=MODEL, settings={"cooldown_s": "0"}, actor="bench"), timeout=30)
            for failing in FAILING:
                for load in LOADS:
                    machine.wait_idle(args.wait_idle)
                    rows += detect_under(server, events, load, failing, args)
        finally:
            events.close()
            server.stop()
    stats.table("From the bad version's activation to the guard's rollback (client side;"
                " 'server ms': between the two events' server times)",
                ["failing", "load", "calm req/s", "Activate RPC ms (server total_ms)",
                 "RPC return -> rollback event ms", "activate -> rollback event ms (server)",
                 "v3 calls", "of which failed", "failed after RPC return", "rule",
                 "guard window failed/requests", "target met", "others"], rows)
    print("v3 calls: every call answered by the bad version or failed, from the Activate RPC"
          " to the next repeat's (the tail in flight at the rollback included). The target is"
          " checked\nagainst v3 calls and the larger of the two times.\n"
          "target: rolled back within 200 requests or 2 s (applies at >= 50 req/s)")


# ---- hot path ------------------------------------------------------------------------------


#: variant -> (flags, on probation)
VARIANTS = {"--no-guard": (("--no-guard",), False), "guard on, trusted": ((), False),
            "guard on, probation": ((), True)}


@dataclass(frozen=True, slots=True)
class HotRun:
    round: int
    variant: str
    figures: stats.Figures


def hot_run(repo: Path, pool: ClientPool, variant: str, number: int,
            args: argparse.Namespace) -> HotRun:
    flags, probation = VARIANTS[variant]
    server = Sidecar(repo, *flags)
    try:
        if probation:
            server.activate(MODEL, 1)
            server.activate(MODEL, 2)  # active again, on probation (600 s)
        w = pool.measure(server, args.warmup, args.duration)
    finally:
        server.stop()
    if w.samples.failed or w.samples.wrong:
        print(f"  {variant}: {w.samples.failed} failed, {w.samples.wrong} wrong:"
              f" {w.samples.first_error}")
    return HotRun(number, variant, w.figures)


def part_hotpath(args: argparse.Namespace) -> None:
    print(f"\n## hot path: 1 client process x 16 in flight, {MODEL} batch 1;"
          f" {args.rounds} rounds of {args.duration:g} s per variant, order rotated")
    names = list(VARIANTS)
    with scratch("lifecycle-guardcost-") as root, ClientPool(Workload()) as pool:
        repo = tiny_repo(root)
        kept, dropped = stats.rounds(
            args.rounds, args,
            lambda n: [hot_run(repo, pool, v, n, args)
                       for v in names[(n - 1) % 3:] + names[:(n - 1) % 3]],
            lambda r: r.figures.others_cores)
    stats.table("Each run (others: CPU cores used by other processes)",
                ["round", "variant", "req/s", "p50 ms", "p99 ms", "server CPU us/call",
                 "errors", "others"],
                [[stats.round_label(r.round, f.others_cores, args.max_others, r in dropped),
                  r.variant, fmt(f.req_s, 0), fmt(f.p50_ms), fmt(f.p99_ms),
                  fmt(f.server_us_per_call, 1), f.errors, fmt(f.others_cores)]
                 for r in kept + dropped for f in [r.figures]])

    stats.variant_table("Guard cost (medians across rounds; ratios to --no-guard)", kept, names,
                        p99_digits=2)


def main(argv: Sequence[str] | None = None) -> int:
    return machine.run_parts({"detection": part_detection, "hotpath": part_hotpath},
                             parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
