"""Dynamic-batching benchmark: batch-1 calls of a weight-bound model, 1 to 64 in flight.

The model is `large_model(1, megabytes=100)` (examples/make_models.py: FP32
[batch, 4] -> [batch, 3] through one 5120 x 5120 FP32 weight, ~100 MB), written
to a temporary repository that holds only it and no sidecar.json, so the
server flags decide the batching. One run of its batch 1 reads every weight
(~5 ms on one onnxruntime thread here); one run of 64 rows costs about 8 of
them, which is what batching can win. Every call sends one row (INPUT0 FP32
[1, 4]) from a pool of 256 different rows, and its answer is checked against
that row's output from onnxruntime in this process (rtol 1e-4, atol 1e-5), so
a batch whose outputs go to the wrong calls shows as wrong answers.

Servers, each with one onnxruntime intra-op thread:

- minimal: bench/minimal_server.py --intra-op-threads 1 (the baseline; it runs
  every call inline on its event loop, one at a time);
- sidecar: `sidecar serve --intra-op-threads 1`, batching off (its default;
  calls this long go to its inference thread pool, one thread per core);
- sidecar-batched: the same with --max-batch-size 64 --max-queue-delay-us 0
  (change them with --batched-arg=...).

For each in-flight level (1, 4, 16, 64: a closed loop, one client process),
rounds of one run of each server (started fresh for every run; the order
rotates from round to round, so drift hits all of them), each a warm-up then a
measured window: requests/s, p50 and p99 latency seen by the client, server CPU
per request, RSS, cores. A table per level (medians across rounds), then a
summary against the targets: at 64 in flight, sidecar-batched >= 3x minimal's
requests/s with a p99 below minimal's; at 1 in flight, sidecar-batched's p50
and p99 <= 1.1x the unbatched sidecar's. With --plot, an SVG of requests/s and
p99 against calls in flight. Figures are not asserted anywhere. The exit status
is 1 if any call failed or answered wrong (warm-ups and disturbed rounds count),
2 if a server or a client could not run. A default run takes about 5 min (36
runs of 1 + 6 s and start-ups); --quick about 40 s.

    python bench/batching.py [--quick] [--duration S] [--warmup S] [--rounds R]
                             [--in-flight 1,4,16,64] [--servers minimal,sidecar,sidecar-batched]
                             [--batched-arg=--flag=value ...] [--sidecar-arg=--flag=value ...]
                             [--minimal-arg=--flag=value ...] [--client-procs P]
                             [--megabytes M] [--json FILE] [--plot FILE.svg]
                             [--max-others CORES] [--retries N] [--wait-idle S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from harness import machine, models, plot, server, stats
from harness.clients import ClientPool, Workload
from harness.stats import NAN, Figures, fmt
from serverlog import ServerLogError

MODEL = "large"
POOL_ROWS = 256  # different inputs the calls cycle through
SERVERS = ("minimal", "sidecar", "sidecar-batched")
BATCHED = "sidecar-batched"
#: the batched sidecar's own flags; --batched-arg comes after them, so it wins
BATCHED_ARGS = ("--max-batch-size", "64", "--max-queue-delay-us", "0")
ORT_THREADS = ("--intra-op-threads", "1")
#: targets: at TOP in flight, batched/minimal req/s >= MIN_SPEEDUP and p99 below
#: minimal's (ratio < MAX_TOP_P99); at 1 in flight, batched/sidecar p50 and p99 <= MAX_SLOWDOWN
TOP, MIN_SPEEDUP, MAX_TOP_P99, MAX_SLOWDOWN = 64, 3.0, 1.0, 1.1
LABELS = {"req_s": "req/s", "p50_ms": "p50", "p99_ms": "p99"}


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("in-flight levels must be integers >= 1")
    return tuple(sorted(set(levels)))


def _servers(text: str) -> tuple[str, ...]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in SERVERS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(SERVERS)}, not {text!r}")
    return tuple(k for k in SERVERS if k in chosen)  # always in the same order


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--quick", action="store_true", help="1 round of 0.5 + 1 s per run (a smoke test)")
    add("--duration", type=float, default=6.0, help="measured seconds per run (default 6)")
    add("--warmup", type=float, default=1.0, help="seconds of load before each window")
    add("--rounds", type=int, default=3, help="runs of each server per level (default 3)")
    add("--in-flight", type=_levels, default=(1, 4, 16, 64), metavar="N,N,...",
        help="calls in flight, one level after another (default 1,4,16,64)")
    add("--servers", type=_servers, default=SERVERS, metavar="NAME,...",
        help=f"servers to run (default {','.join(SERVERS)})")
    add("--batched-arg", action="append", default=[], metavar="ARG",
        help="extra flag for the batched sidecar, after its own"
        f" ({' '.join(BATCHED_ARGS)}), e.g. --batched-arg=--max-queue-delay-us=500")
    add("--sidecar-arg", action="append", default=[], metavar="ARG",
        help="extra flag for both sidecars, e.g. --sidecar-arg=--inline-max-us=0")
    add("--minimal-arg", action="append", default=[], metavar="ARG",
        help="extra flag for bench/minimal_server.py (after --intra-op-threads 1)")
    add("--client-procs", type=int, default=1,
        help="client processes sharing the calls in flight (default 1)")
    add("--megabytes", type=int, default=100, help="size of the model (default 100)")
    add("--json", type=Path, help="write every run's figures to this file")
    add("--plot", type=Path, metavar="FILE.svg",
        help="write an SVG of req/s and p99 against calls in flight")
    machine.add_noise_args(parser, max_others=0.1, wait_idle=0.0, retries=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 0.5, 1
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("duration > 0, warmup >= 0 and rounds >= 1 please")
    if args.client_procs < 1 or args.megabytes < 1:
        parser.error("--client-procs and --megabytes must be >= 1")
    return args


@dataclass(frozen=True, slots=True)
class Setup:
    repository: Path  # only the model, no sidecar.json: the flags decide the batching
    model_file: Path
    workload: Workload


def build(root: Path, megabytes: int) -> Setup:
    """The repository, and the pool of rows with their outputs from onnxruntime here."""
    model_file = server.write_version(root / "repo", MODEL, 1,
                                      models.large_model(1, megabytes=megabytes))
    rows = np.random.default_rng(seed=7).standard_normal((POOL_ROWS, 1, models.TINY_IN),
                                                         dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    expected = np.stack([session.run(None, {"INPUT0": row})[0] for row in rows])
    del session  # ~100 MB
    return Setup(root / "repo", model_file,
                 Workload(model=MODEL, data_pool=rows, expected_pool=expected))


def start(kind: str, setup: Setup, args: argparse.Namespace) -> server.Server:
    if kind == "minimal":
        return server.minimal(setup.model_file, [*ORT_THREADS, *args.minimal_arg])
    extra = [*BATCHED_ARGS, *args.batched_arg] if kind == BATCHED else []
    return server.Sidecar(setup.repository, *ORT_THREADS, *args.sidecar_arg, *extra, name=kind)


@dataclass(frozen=True, slots=True)
class Run:
    kind: str
    figures: Figures  # of the measured window
    bad: int  # calls that failed or answered wrong in the whole run, warm-up included
    first_error: str


def one_run(kind: str, level: int, number: int, setup: Setup, pool: ClientPool,
            args: argparse.Namespace) -> Run:
    srv = start(kind, setup, args)
    try:
        window = pool.measure(srv, args.warmup, args.duration, in_flight=level)
    finally:
        srv.stop()
    f, every = window.figures, window.samples
    print(f"  {level:>3} in flight, round {number}/{args.rounds} {kind:<15} {f.req_s:7.0f} req/s"
          f"  p50 {f.p50_ms:8.3f}  p99 {f.p99_ms:8.3f} ms  server {f.server_cores:.2f} cores,"
          f" {f.rss_mb:.0f} MB, others {f.others_cores:.2f} cores"
          f"  errors {every.failed + every.wrong}", flush=True)
    first = every.first_error if every.failed else ""
    if every.wrong and not first:
        first = f"{every.wrong} answers differ from onnxruntime's output for their input"
    return Run(kind, f, every.failed + every.wrong, first)


@dataclass(slots=True)
class Level:
    """One in-flight level: every kept run of each server, in round order, and medians."""

    in_flight: int
    runs: dict[str, list[Figures]]
    medians: dict[str, Figures]
    errors: int
    disturbed: int

    def ratio(self, a: str, b: str, figure: str) -> tuple[float, list[float]]:
        """a/b of a figure: of the medians, and round by round; NaN if not both ran."""
        if a not in self.medians or b not in self.medians:
            return NAN, []
        per = [stats.ratio(getattr(x, figure), getattr(y, figure))
               for x, y in zip(self.runs[a], self.runs[b], strict=True)]
        return stats.ratio(getattr(self.medians[a], figure), getattr(self.medians[b], figure)), per

    def to_json(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "errors": self.errors,
                "disturbed_runs": self.disturbed,
                "runs": {k: [asdict(f) for f in v] for k, v in self.runs.items()},
                "medians": {k: asdict(f) for k, f in self.medians.items()}}


def run_level(level: int, setup: Setup, pool: ClientPool, args: argparse.Namespace) -> Level:
    kinds: tuple[str, ...] = args.servers

    def one_round(n: int) -> list[Run]:  # the order rotates: no server always goes first
        shift = (n - 1) % len(kinds)
        return [one_run(k, level, n, setup, pool, args) for k in kinds[shift:] + kinds[:shift]]

    kept, dropped = stats.rounds(args.rounds, args, one_round, lambda r: r.figures.others_cores)
    runs = {k: [r.figures for r in kept if r.kind == k] for k in kinds}
    med = {k: stats.medians(v) for k, v in runs.items()}
    stats.table(f"{level} in flight (batch-1 calls of {MODEL}, INPUT0 FP32 [1, 4];"
                f" medians of {args.rounds} round(s))",
                ["", "req/s", "p50 ms", "p99 ms", "CPU us/req", "RSS MB", "cores"],
                [[k, fmt(f.req_s, 0), fmt(f.p50_ms, 3), fmt(f.p99_ms, 3),
                  fmt(f.server_us_per_call, 0), fmt(f.rss_mb, 1), fmt(f.server_cores)]
                 for k, f in med.items()])
    disturbed = sum(r.figures.others_cores > args.max_others for r in kept)
    if disturbed:
        print(f"NOISE: other processes used more than {args.max_others:g} cores during"
              f" {disturbed} of {len(kept)} server runs; compare with care"
              " (see --retries, --wait-idle)")
    errors = sum(r.bad for r in kept + dropped)  # a disturbed round's wrong answers count
    if errors:
        print(f"ERRORS: {errors} failed or wrong calls (warm-ups and disturbed rounds"
              " included); the figures above are not valid")
        for r in kept + dropped:
            if r.first_error:
                print(f"  {r.kind}: first error: {r.first_error}")
    sys.stdout.flush()
    return Level(level, runs, med, errors, disturbed)


#: (in flight, the server batched is compared with, figure, comparison, bound)
TARGETS = ((TOP, "minimal", "req_s", ">=", MIN_SPEEDUP),
           (TOP, "minimal", "p99_ms", "<", MAX_TOP_P99),
           (1, "sidecar", "p50_ms", "<=", MAX_SLOWDOWN),
           (1, "sidecar", "p99_ms", "<=", MAX_SLOWDOWN))


def summary(levels: dict[int, Level]) -> list[dict[str, Any]]:
    """Print the summary table and each target, met or missed (or not measured)."""
    def cell(level: Level, kind: str, figure: str, digits: int) -> str:
        return fmt(getattr(level.medians[kind], figure), digits) if kind in level.medians else "-"

    def times(level: Level, base: str, figure: str) -> str:
        value = level.ratio(BATCHED, base, figure)[0]
        return "-" if value != value else f"{value:.2f}x"

    stats.table("Summary (medians; batched = sidecar-batched)",
                ["in flight", *(f"{k} req/s" for k in SERVERS), "batched/minimal req/s",
                 "batched/sidecar req/s", "p99 ms minimal / sidecar / batched",
                 "batched/minimal p99", "batched/sidecar p50", "batched/sidecar p99"],
                [[n, *(cell(lv, k, "req_s", 0) for k in SERVERS),
                  times(lv, "minimal", "req_s"), times(lv, "sidecar", "req_s"),
                  " / ".join(cell(lv, k, "p99_ms", 3) for k in SERVERS),
                  times(lv, "minimal", "p99_ms"), times(lv, "sidecar", "p50_ms"),
                  times(lv, "sidecar", "p99_ms")] for n, lv in levels.items()])
    print()
    judged = []
    for in_flight, base, figure, op, bound in TARGETS:
        name = f"{in_flight} in flight: batched/{base} {LABELS[figure]}"
        level = levels.get(in_flight)
        value, per = level.ratio(BATCHED, base, figure) if level else (NAN, [])
        met: bool | None = None
        if value != value:  # NaN: that level or one of the two servers was not run
            ran = level is not None and {BATCHED, base} <= level.medians.keys()
            print(f"{name}: " + ("no figure (no call succeeded?)" if ran else
                                 f"not measured (needs {in_flight} in flight, {BATCHED}"
                                 f" and {base})"))
        else:
            met = value >= bound if op == ">=" else value < bound if op == "<" else value <= bound
            print(f"{name} {value:.2f}x (target {op} {bound:.1f}x: {'met' if met else 'MISSED'});"
                  f" per round {' '.join(f'{x:.2f}' for x in per)}")
        judged.append({"target": f"{name} {op} {bound}", "value": None if met is None else value,
                       "per_round": per, "met": met})
    sys.stdout.flush()
    return judged


def write_plot(path: Path, levels: dict[int, Level], args: argparse.Namespace) -> None:
    def series(figure: str) -> list[plot.Series]:
        return [plot.Series(k, [(n, getattr(lv.medians[k], figure)) for n, lv in levels.items()])
                for k in args.servers]

    ticks = list(levels)
    plot.write(path, [
        plot.Chart("Throughput", "calls in flight", "requests/s", series("req_s"),
                   x_log=True, x_ticks=ticks),
        plot.Chart("p99 latency (client side)", "calls in flight", "ms", series("p99_ms"),
                   x_log=True, y_log=True, x_ticks=ticks)],
        title=f"Dynamic batching: batch-1 calls of large_model ({args.megabytes} MB),"
        f" medians of {args.rounds} round(s)")
    print(f"plot: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine.describe()
    print(machine.summary(info))
    print(f"model: large_model(1, megabytes={args.megabytes}); servers:"
          f" {', '.join(args.servers)}; in flight: {', '.join(map(str, args.in_flight))};"
          f" {args.warmup:g} s warm-up + {args.duration:g} s measured; {args.rounds} round(s);"
          f" {args.client_procs} client process(es)\nbatched sidecar args:"
          f" {' '.join([*BATCHED_ARGS, *args.batched_arg])}; both sidecars:"
          f" {' '.join([*ORT_THREADS, *args.sidecar_arg])}; minimal:"
          f" {' '.join([*ORT_THREADS, *args.minimal_arg])}\n", flush=True)
    levels: dict[int, Level] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-batching-") as tmp:
        try:
            setup = build(Path(tmp), args.megabytes)
            with ClientPool(setup.workload, args.client_procs) as pool:
                for level in args.in_flight:
                    levels[level] = run_level(level, setup, pool, args)
        except (RuntimeError, ServerLogError) as exc:  # a server or a client failed
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    targets = summary(levels)
    if args.plot:
        write_plot(args.plot, levels, args)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
            "levels": {str(n): lv.to_json() for n, lv in levels.items()},
            "targets": targets}, indent=2) + "\n")
    return 1 if any(lv.errors for lv in levels.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
