"""Data-plane benchmark: the sidecar against a minimal grpc.aio server and raw onnxruntime.

For each scenario, the floor (onnxruntime `session.run` in a loop in this
process, one thread, default session options), then rounds of one sidecar run
and one run of the minimal baseline (bench/minimal_server.py), both driven by
the same load, in turns (sidecar first in odd rounds, minimal first in even
ones); fresh servers for every run, or (`--live`) one of each for the whole
scenario. One table per scenario (medians across rounds) with the
sidecar/minimal ratios against the targets of issue 13. Figures are not
asserted anywhere: docs/performance.md records them.

- tiny: batch 1 of `tiny` (INPUT0 FP32 [1, 4]), transport-bound: >= 0.95x req/s;
- dense: batch 8 of `dense` (INPUT0 FP32 [8, 512], ~4 MB), compute-bound: >= 1.0x;
- both: p99 no worse than 1.1x the baseline's.

    python bench/run.py [--quick] [--duration S] [--warmup S] [--concurrency N] [--rounds R]
                        [--scenario tiny|dense ...] [--sidecar-arg=--flag=value ...]
                        [--minimal-arg=--flag=value ...] [--client-procs P] [--live]
                        [--server-cpus LIST] [--client-cpus LIST] [--json FILE]
                        [--max-others CORES] [--retries N] [--wait-idle S]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from harness import machine, models, server, stats
from harness.clients import ClientPool, Samples, Workload
from harness.stats import Figures, fmt
from serverlog import ServerLogError

#: The targets of issue 13 (docs/performance.md, "Per-call overhead"); measure
#: with --minimal-arg=--intra-op-threads=1 for equal onnxruntime threads.
MAX_P99_RATIO = 1.1
KINDS = ("sidecar", "minimal")  # the runs of a round (see `order`)
#: key -> (model, batch, width, target: sidecar/minimal req/s at least)
SCENARIOS = {"tiny": (lambda: models.tiny_model(1), 1, models.TINY_IN, 0.95),
             "dense": (models.dense_model, 8, 512, 1.0)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--quick", action="store_true", help="1 round of 0.5 + 1 s per run (a smoke test)")
    add("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    add("--warmup", type=float, default=1.0, help="seconds of load before each window")
    add("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    add("--rounds", type=int, default=3, help="sidecar/minimal pairs per scenario (default 3)")
    add("--scenario", action="append", choices=tuple(SCENARIOS),
        help="run only this scenario (repeatable; default both)")
    add("--sidecar-arg", action="append", default=[], metavar="ARG",
        help="extra flag for `sidecar serve`, e.g. --sidecar-arg=--inline-max-us=0")
    add("--minimal-arg", action="append", default=[], metavar="ARG",
        help="extra flag for bench/minimal_server.py, e.g. --minimal-arg=--intra-op-threads=1")
    add("--client-procs", type=int, default=1,
        help="client processes sharing the calls in flight (default 1)")
    add("--server-cpus", type=machine.cpu_list, default=[],
        help="pin each server (every thread) to these CPUs, e.g. 0 (default: none)")
    add("--client-cpus", type=machine.cpu_list, default=[],
        help="pin the client processes to these CPUs, e.g. 1 (default: none)")
    add("--live", action="store_true",
        help="start each server once per scenario and measure every round's windows on"
             " the live servers (warm-up at most 0.3 s): more rounds in the same time")
    add("--json", type=Path, help="write every run's figures to this file")
    machine.add_noise_args(parser, max_others=0.1, wait_idle=0.0, retries=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 0.5, 1
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("duration > 0, warmup >= 0, concurrency >= 1 and rounds >= 1 please")
    if not 1 <= args.client_procs <= args.concurrency:
        parser.error("--client-procs must be between 1 and --concurrency")
    return args


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    repository: Path  # holding only this model, as the minimal server does: the RSS compare
    model_file: Path
    workload: Workload
    target: float


def build(key: str, root: Path) -> Scenario:
    make, batch, width, target = SCENARIOS[key]
    repository = root / f"repo-{key}"
    model_file = server.write_version(repository, key, 1, make())
    data = np.random.default_rng(seed=7).standard_normal((batch, width), dtype=np.float32)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"INPUT0": data})
    return Scenario(key, f"batch-{batch} {key} (INPUT0 FP32 {list(data.shape)})", repository,
                    model_file,
                    Workload(model=key, data=data, expected=expected), target)


def floor(sc: Scenario, args: argparse.Namespace) -> Figures:
    """session.run in a loop on one thread of this process: no transport at all."""
    session = ort.InferenceSession(str(sc.model_file), providers=["CPUExecutionProvider"])
    feeds = {"INPUT0": sc.workload.data}
    warm_end = time.monotonic() + args.warmup
    while time.monotonic() < warm_end:
        session.run(None, feeds)
    started, done = [], []
    meter = machine.CpuMeter([])
    cpu0 = time.process_time()  # every thread of this process, onnxruntime's included
    t0 = time.monotonic()
    while (t := time.monotonic()) < t0 + args.duration:
        session.run(None, feeds)
        started.append(t)
        done.append(time.monotonic())
    cpu = time.process_time() - cpu0
    span = meter.stop()
    t1 = time.monotonic()
    del session
    gc.collect()
    samples = Samples(np.array(started), np.array(done), np.ones(len(done), dtype=np.int64))
    return Figures.of(samples, t0, t1, server_cpu_s=cpu,
                      others_cores=max(0.0, span.busy - cpu) / span.seconds)


def one_run(kind: str, number: int, sc: Scenario, pool: ClientPool,
            args: argparse.Namespace, live: dict[str, server.Server] | None = None
            ) -> tuple[str, Figures]:
    """One measured window on a fresh server of `kind` (stopped after it), or on
    the live one of `live`."""
    srv = live[kind] if live is not None else start(kind, sc, args)
    try:
        warmup = min(args.warmup, 0.3) if live is not None else args.warmup
        f = pool.measure(srv, warmup, args.duration, in_flight=args.concurrency).figures
    finally:
        if live is None:
            srv.stop()
    print(f"  {sc.key} round {number}/{args.rounds} {kind:<8} {f.req_s:7.0f} req/s"
          f"  p99 {f.p99_ms:7.3f} ms  server {f.server_cores:.2f} cores,"
          f" client {f.client_us_per_call:.0f} us/req, others {f.others_cores:.2f} cores"
          f"  errors {f.errors + f.wrong}", flush=True)
    return kind, f


def start(kind: str, sc: Scenario, args: argparse.Namespace) -> server.Server:
    srv = (server.Sidecar(sc.repository, *args.sidecar_arg) if kind == "sidecar"
           else server.minimal(sc.model_file, args.minimal_arg))
    if args.server_cpus:
        machine.pin(srv.pid, args.server_cpus)
    return srv


def order(number: int) -> tuple[str, ...]:
    """The runs of round `number`: sidecar first in odd rounds, minimal first in
    even ones (A B, B A, ...), so that whatever favours the first or the second
    run of a round favours both servers alike."""
    return KINDS if number % 2 else KINDS[::-1]


def run_scenario(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    base, _ = stats.rounds(1, args, lambda _: [floor(sc, args)], lambda f: f.others_cores)
    live: dict[str, server.Server] = {}
    try:
        if args.live:
            for kind in KINDS:
                live[kind] = start(kind, sc, args)
        with ClientPool(sc.workload, args.client_procs) as pool:
            for pid in pool.pids if args.client_cpus else ():
                machine.pin(pid, args.client_cpus)
            kept, _ = stats.rounds(
                args.rounds, args,
                lambda n: [one_run(k, n, sc, pool, args, live if args.live else None)
                           for k in order(n)],
                lambda r: r[1].others_cores)
    finally:
        for srv in live.values():
            srv.stop()
    runs = {k: [f for kind, f in kept if kind == k] for k in KINDS}
    med = {"floor": base[0], "minimal": stats.medians(runs["minimal"]),
           "sidecar": stats.medians(runs["sidecar"])}
    rps = [s.req_s / m.req_s for m, s in zip(runs["minimal"], runs["sidecar"], strict=True)]
    p99 = [s.p99_ms / m.p99_ms for m, s in zip(runs["minimal"], runs["sidecar"], strict=True)]
    ratios = {k: stats.ratio(getattr(med["sidecar"], k), getattr(med["minimal"], k))
              for k in ("req_s", "p99_ms", "server_us_per_call")}
    stats.table(sc.title, ["", "req/s", "p50 ms", "p99 ms", "CPU us/req", "RSS MB", "cores"],
                [[name, fmt(f.req_s, 0), fmt(f.p50_ms, 3), fmt(f.p99_ms, 3),
                  fmt(f.server_us_per_call, 0), fmt(f.rss_mb, 1), fmt(f.server_cores)]
                 for name, f in med.items()])
    ok_rps, ok_p99 = ratios["req_s"] >= sc.target, ratios["p99_ms"] <= MAX_P99_RATIO
    print(f"\nsidecar/minimal: req/s {ratios['req_s']:.2f}x (target >= {sc.target:.2f}x:"
          f" {'met' if ok_rps else 'MISSED'}), p99 {ratios['p99_ms']:.2f}x (target <="
          f" {MAX_P99_RATIO:.1f}x: {'met' if ok_p99 else 'MISSED'}), CPU/req"
          f" {ratios['server_us_per_call']:.2f}x\nper round: req/s"
          f" {' '.join(f'{x:.2f}' for x in rps)}; p99 {' '.join(f'{x:.2f}' for x in p99)}")
    disturbed = sum(f.others_cores > args.max_others for _, f in kept)
    floor_too = base[0].others_cores > args.max_others
    if disturbed or floor_too:
        print(f"NOISE: other processes used more than {args.max_others:g} cores during"
              f" {disturbed} of {len(kept)} server runs{' and the floor' if floor_too else ''};"
              " compare with care (see --retries, --wait-idle)")
    errors = sum(f.errors + f.wrong for _, f in kept)
    if errors:
        print(f"ERRORS: {errors} failed or wrong calls; the figures above are not valid")
    print(flush=True)
    return {"title": sc.title, "target_req_s_ratio": sc.target, "errors": errors,
            "runs": {k: [asdict(f) for f in v] for k, v in runs.items()},
            "medians": {k: asdict(f) for k, f in med.items()}, "ratios": ratios,
            "per_round": {"req_s": rps, "p99": p99}, "disturbed_runs": disturbed}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine.describe()
    print(machine.summary(info))
    print(f"load: {args.concurrency} calls in flight from {args.client_procs} client"
          f" process(es); {args.warmup:g} s warm-up + {args.duration:g} s measured;"
          f" {args.rounds} round(s)\nsidecar args: {' '.join(args.sidecar_arg) or '(none)'};"
          f" minimal args: {' '.join(args.minimal_arg) or '(none)'}\n", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        try:
            for key in args.scenario or list(SCENARIOS):
                results[key] = run_scenario(build(key, Path(tmp)), args)
        except (RuntimeError, ServerLogError) as exc:  # a server or a client failed
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in
                                                                   vars(args).items()},
                                         "scenarios": results}, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
