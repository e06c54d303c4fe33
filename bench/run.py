"""Data-plane benchmark: the sidecar against a minimal grpc.aio server.

This module is the entry point and owns the plan of a benchmark invocation:
it writes the models, measures the in-process floor, then alternates measured
runs of the sidecar and of the minimal baseline (bench/minimal_server.py) for
each scenario, and prints one table per scenario (medians across rounds).

    python bench/run.py [--duration S] [--concurrency N] [--rounds R] [--json FILE]
                        [--scenario tiny|dense ...] [--sidecar-arg=--flag=value ...]
                        [--minimal-arg=--flag=value ...] [--client-procs P] [--client-mode M]
                        [--max-others CORES] [--retries N] [--wait-idle S]

Scenarios (targets from the design's "Performance targets"):
- tiny: batch 1 of `tiny` (INPUT0 FP32 [1, 4]), transport-bound, >= 0.9x.
- dense: batch 8 of `dense` (INPUT0 FP32 [8, 512], ~4 MB), compute-bound, >= 1.0x.
Both: p99 no worse than 1.2x the baseline's.

Rows: floor (onnxruntime `session.run` in a loop in this process, one thread,
default session options), minimal, sidecar. The servers run as subprocesses
and are driven by the same load generator (bench/loadgen.py); server CPU and
RSS come from /proc (bench/servers.py); the CPU other processes took during
each window comes from /proc/stat (bench/machine.py) and marks a run as
disturbed. Figures are not asserted anywhere: docs/performance.md records them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import loadgen
import machine
import numpy as np
import onnxruntime as ort
import report
import servers
from loadgen import Schedule, Workload
from report import Figures, Targets

EXAMPLES = machine.ROOT / "examples"
#: Lead time between `go` and the warm-up: the workers connect in it.
LEAD_S = 0.05


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    model: str
    model_file: Path
    repository: Path  # holds this model only, so the servers' RSS compare
    feeds: dict[str, np.ndarray]
    workload: Workload
    targets: Targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each measured window (default 1)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="calls in flight from the clients (default 16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="sidecar/minimal pairs of runs per scenario (default 3)")
    parser.add_argument("--scenario", action="append", choices=("tiny", "dense"),
                        help="run only this scenario (repeatable; default both)")
    parser.add_argument("--sidecar-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for `sidecar serve`, e.g."
                        " --sidecar-arg=--inline-max-us=0 (repeatable)")
    parser.add_argument("--minimal-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for bench/minimal_server.py, e.g."
                        " --minimal-arg=--intra-op-threads=1 (repeatable)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client worker processes sharing the calls in flight (default 1)")
    parser.add_argument("--client-mode", choices=loadgen.MODES, default="aio",
                        help="grpc.aio tasks or sync stubs in threads (default aio)")
    parser.add_argument("--max-others", type=float, default=0.1, metavar="CORES",
                        help="CPU cores other processes may use during a run before it"
                        " counts as disturbed (default 0.1)")
    parser.add_argument("--retries", type=int, default=0,
                        help="measure a disturbed round again, up to this many times"
                        " (default 0)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for an idle machine"
                        " (default 0: do not wait)")
    parser.add_argument("--json", type=Path, help="write the raw figures to this file")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("duration > 0, warmup >= 0, concurrency >= 1 and rounds >= 1 please")
    if args.retries < 0 or args.wait_idle < 0 or args.max_others < 0:
        parser.error("--retries, --wait-idle and --max-others cannot be negative")
    if not 1 <= args.client_procs <= args.concurrency:
        parser.error("--client-procs must be between 1 and --concurrency")
    return args


# ---- scenarios -----------------------------------------------------------------------


def make_models() -> ModuleType:
    """examples/make_models.py, the project's one source of generated models."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("make_models")


def build_scenario(
    key: str, root: Path, model: Any, batch: int, width: int, targets: Targets
) -> Scenario:
    # One repository per scenario holding only its model, as the minimal server
    # holds only one: their RSS then compare.
    repository = root / f"repo-{key}"
    model_file = make_models().write_model(model, repository, key, 1)
    data = np.random.default_rng(seed=7).standard_normal((batch, width), dtype=np.float32)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    (expected,) = session.run([output], {"INPUT0": data})
    workload = Workload(
        model=key,
        input_name="INPUT0",
        datatype="FP32",
        shape=data.shape,
        payload=data.tobytes(),
        output_name=output,
        output_shape=tuple(expected.shape),
        expected=np.ascontiguousarray(expected, dtype=np.float32).tobytes(),
    )
    title = f"batch-{batch} {key} (INPUT0 FP32 {list(data.shape)})"
    return Scenario(key, title, key, model_file, repository, {"INPUT0": data}, workload, targets)


def build_scenarios(root: Path, keys: Sequence[str]) -> list[Scenario]:
    models = make_models()
    makers = {
        "tiny": lambda: build_scenario(
            "tiny", root, models.tiny_model(1), 1, models.TINY_IN, Targets(0.9)
        ),
        "dense": lambda: build_scenario(
            "dense", root, models.dense_model(), 8, 512, Targets(1.0)
        ),
    }
    return [makers[k]() for k in keys]


# ---- measured runs -------------------------------------------------------------------


def measure_floor(scenario: Scenario, warmup_s: float, duration_s: float) -> Figures:
    """session.run in a loop on one thread of this process: no transport at all."""
    session = ort.InferenceSession(str(scenario.model_file), providers=["CPUExecutionProvider"])
    feeds = scenario.feeds
    warm_end = time.monotonic() + warmup_s
    while time.monotonic() < warm_end:
        session.run(None, feeds)
    latencies: list[float] = []
    cpu0 = time.process_time()  # every thread of this process, onnxruntime's included
    all0 = machine.busy_seconds()
    start = time.monotonic()
    end = start + duration_s
    while (t0 := time.monotonic()) < end:
        session.run(None, feeds)
        latencies.append(time.monotonic() - t0)
    cpu = time.process_time() - cpu0
    others = machine.busy_seconds() - all0 - cpu
    window = time.monotonic() - start
    del session
    gc.collect()
    return report.figures("floor", 0, latencies, window_s=window, cpu_s=cpu, rss_mb=None,
                          errors=0, others_cpu_s=others)


def start_server(
    kind: str, scenario: Scenario, args: argparse.Namespace, workdir: Path
) -> servers.Server:
    """Start one server with `workdir` (fresh per run) as its working directory."""
    if kind == "sidecar":
        command = servers.sidecar_command(scenario.repository, workdir / "state", args.sidecar_arg)
        return servers.start(kind, command, servers.sidecar_ready, cwd=workdir)
    command = servers.minimal_command(scenario.model_file, args.minimal_arg)
    return servers.start(kind, command, servers.minimal_ready, cwd=workdir)


def measure_server(kind: str, round_: int, scenario: Scenario, args: argparse.Namespace) -> Figures:
    """One run: clients and server start together, warm-up, measured window."""
    clients = loadgen.start_clients(
        scenario.workload, processes=args.client_procs, concurrency=args.concurrency,
        mode=args.client_mode,
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=scenario.repository.parent))
    try:
        server = start_server(kind, scenario, args, workdir)
    except BaseException:
        clients.close()
        raise
    try:
        clients.wait_ready()
        begin = time.monotonic() + LEAD_S
        schedule = Schedule(begin, begin + args.warmup, begin + args.warmup + args.duration)
        clients.go(server.address, schedule)
        _sleep_until(schedule.measure)
        before = _cpu_readings(server, clients.pids)
        _sleep_until(schedule.end)
        cpu, client, every = (b - a for a, b in zip(before, _cpu_readings(server, clients.pids),
                                                     strict=True))
        others = every - cpu - client
        rss = server.rss_mb()
        result = clients.collect()
    finally:
        server.stop()
    return report.figures(kind, round_, result.latencies_s, window_s=args.duration, cpu_s=cpu,
                          rss_mb=rss, errors=result.errors, client_cpu_s=client,
                          others_cpu_s=others)


def _cpu_readings(server: servers.Server, client_pids: list[int]) -> tuple[float, float, float]:
    """CPU seconds so far of the server, of the clients, and of the whole machine."""
    clients = sum(servers.cpu_seconds(pid) for pid in client_pids)
    return server.cpu_seconds(), clients, machine.busy_seconds()


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def measure_round(
    round_: int, scenario: Scenario, args: argparse.Namespace
) -> dict[str, Figures]:
    """One sidecar run then one minimal run; again (up to --retries times) while
    other processes took more than --max-others cores in either window."""
    for attempt in range(args.retries + 1):
        pair: dict[str, Figures] = {}
        # Alternate, so drift on a shared machine hits both servers alike.
        for kind in ("sidecar", "minimal"):
            if args.wait_idle and not machine.wait_until_idle(args.wait_idle):
                print(f"  (machine still busy after {args.wait_idle:g} s; running anyway)")
            pair[kind] = figures = measure_server(kind, round_, scenario, args)
            print(f"  {scenario.key} round {round_ + 1}/{args.rounds} {kind:<8}"
                  f" {figures.req_s:7.0f} req/s  p99 {figures.p99_ms:7.3f} ms"
                  f"  server {figures.server_cores:.2f} cores,"
                  f" client {figures.client_cpu_us_per_req:.0f} us/req,"
                  f" others {figures.others_cores:.2f} cores  errors {figures.errors}",
                  flush=True)
        disturbed = max(f.others_cores for f in pair.values()) > args.max_others
        if not disturbed or attempt == args.retries:
            return pair
        print(f"  round {round_ + 1}: other processes used more than {args.max_others:g}"
              " cores; measuring it again", flush=True)
    raise AssertionError("unreachable")


def floor_with_retries(scenario: Scenario, args: argparse.Namespace) -> Figures:
    """The floor, measured again (up to --retries times) while disturbed."""
    for attempt in range(args.retries + 1):
        if args.wait_idle:
            machine.wait_until_idle(args.wait_idle)
        floor = measure_floor(scenario, args.warmup, args.duration)
        if floor.others_cores <= args.max_others or attempt == args.retries:
            break
        print(f"  {scenario.key} floor: other processes used {floor.others_cores:.2f}"
              " cores; measuring it again", flush=True)
    return floor


def run_scenario(scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    floor = floor_with_retries(scenario, args)
    runs: dict[str, list[Figures]] = {k: [] for k in report.SERVERS}
    for round_ in range(args.rounds):
        for kind, figures in measure_round(round_, scenario, args).items():
            runs[kind].append(figures)
    medians = [floor, *(report.median(runs[k]) for k in report.SERVERS)]
    ratios = report.ratios(runs["minimal"], runs["sidecar"])
    print()
    print(report.table(scenario.title, medians, ratios, scenario.targets))
    disturbed = sum(f.others_cores > args.max_others for k in report.SERVERS for f in runs[k])
    if disturbed or floor.others_cores > args.max_others:
        print(f"NOISE: other processes used more than {args.max_others:g} cores during"
              f" {disturbed} of {2 * args.rounds} server runs"
              f"{' and the floor' if floor.others_cores > args.max_others else ''};"
              " compare with care (see --retries, --wait-idle)")
    errors = sum(f.errors for k in report.SERVERS for f in runs[k])
    if errors:
        print(f"ERRORS: {errors} failed calls; the figures above are not valid")
    print(flush=True)
    return {
        "title": scenario.title,
        "targets": asdict(scenario.targets),
        "floor": asdict(floor),
        "runs": {k: [asdict(f) for f in v] for k, v in runs.items()},
        "medians": [asdict(f) for f in medians],
        "ratios": asdict(ratios),
        "errors": errors,
        "disturbed_runs": disturbed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine.describe()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), python {info['python']},"
          f" onnxruntime {info['onnxruntime']}, grpcio {info['grpcio']},"
          f" load average {' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}")
    print(f"sidecar: {info['sidecar_revision']} (git revision of this checkout)")
    print(f"load: {args.concurrency} calls in flight from {args.client_procs} {args.client_mode}"
          f" client process(es); {args.warmup:g} s warm-up + {args.duration:g} s measured;"
          f" {args.rounds} round(s)")
    print(f"sidecar args: {' '.join(args.sidecar_arg) or '(none)'};"
          f" minimal args: {' '.join(args.minimal_arg) or '(none)'}")
    print(flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        try:
            for scenario in build_scenarios(Path(tmp), args.scenario or ["tiny", "dense"]):
                results[scenario.key] = run_scenario(scenario, args)
        except RuntimeError as exc:  # a server or a client failed: no figures
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                   "scenarios": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
