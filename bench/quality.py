"""Quality benchmark: detection of a worse version, no false rollback, request-path cost.

How fast a worse version is rolled back on ground truth, that an equal one
never is, and what remembering answers costs the request path.

This script owns the figures of issue 14's targets: a version one class always
mispredicted (~20-25 % of accuracy lost) is rolled back "within a few hundred
feedback items at the defaults"; a version equal to its predecessor never is
(0 false rollbacks over 10^5 feedback items); remembering answers costs < 3 % of
batch-1 throughput. Figures are printed, never asserted (docs/quality.md).

The client is harness/feedback.py: every call carries an id of its own, and the
truth of each answer (INT64 class per row, named after the output) goes back
`--truth-delay` s later in SendStream batches. The model is the example
classifier (examples/make_models.py `classifier_model`: 4 features N(0, 1), the
class of the largest; "good" ~90.5 % accurate, "worse" never predicts class 3,
~71.4 %, "equal" as accurate as good with other errors) with the quality
settings of examples/quality/models/classifier/sidecar.json (the defaults:
accuracy, min_samples 200, max_drop 0.02, confidence 0.95, shadow_share 1).

- detection: a server (--no-watch) serves classifier version 1 ("good") under
  a load of about 100 calls/s (open loop) and as fast as 16 calls in flight
  allow (closed loop); "worse" is written as version 2 and activated by RPC
  (force: the guard quarantines it each time; SetGuard cooldown_s 0), each
  time after it was unloaded and the truths of the copies it answered as the
  warm previous version came in (so each activation starts with no evidence
  about it); the script waits for the guard's rollback event and reports the truth items sent
  for version 2's answers before the event arrived (client side), the paired
  rows and McNemar cells in the event's evidence (server side), and seconds
  from the Activate RPC's return to the event; --repeats per load; median
  and max.
- equal: version 2 is "equal" (same accuracy, independent errors: each
  version right on ~8.5 % of rows where the other is wrong), activated with
  probation_s set to a day by SetGuard (so every item is judged); the client
  sends --items truth items (10^5; --quick 5000) at 16 calls in flight; any
  rollback of version 2 is a false rollback. Reports the feedback's outcomes,
  items/s, and the quality verdict's last reading (ctl guard).
- cost: batch-1 `tiny` (as bench/run.py's tiny scenario), every call with an
  id, 16 in flight from one client process, against a fresh server per run:
  no quality settings; quality with shadow_share 0 (answers remembered, no
  copies); quality at the defaults (remembered, and a copy of each request run
  by the warm previous version off the request path). Rounds, order rotated;
  req/s, p99, server CPU per call; ratios to the first. Target: the
  remembering variant >= 0.97x the first's req/s.

    python bench/quality.py [--quick] [--part detection|equal|cost ...]
                            [--repeats N] [--items N] [--truth-delay S] [--rounds R]
                            [--duration S] [--warmup S] [--server-cpus 0] [--client-cpus 1]
                            [--max-others CORES] [--retries N] [--wait-idle S]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, machine, models, stats
from harness.clients import Samples
from harness.feedback import FeedbackLoad, FeedbackPool, Records, Run
from harness.server import EventFollower, Sidecar, scratch, tiny_repo, write_version
from harness.stats import Figures, fmt, median, ratio

from sidecar.rpc.proto import control_pb2 as pb

MODEL = "classifier"
WORSE = 2
EXAMPLE_SETTINGS = ROOT / "examples" / "quality" / "models" / MODEL / "sidecar.json"
EVENT_TIMEOUT_S = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--part", action="append", choices=("detection", "equal", "cost"),
        help="run only this part (repeatable; default all)")
    add("--quick", action="store_true",
        help="a smoke test (under a minute): 1 detection repeat per load, 5000 items for"
        " equal, 1 cost round of 2 s; no idle wait, no retries")
    add("--repeats", type=int, default=5, help="detection: activations per load (default 5)")
    add("--items", type=int, default=100_000, help="equal: truth items (default 10^5)")
    add("--truth-delay", type=float, default=0.2,
        help="seconds from an answer to its truth (default 0.2)")
    add("--rounds", type=int, default=3, help="cost: rounds (default 3)")
    add("--duration", type=float, default=6.0, help="cost: measured seconds per run")
    add("--warmup", type=float, default=1.0, help="cost: seconds of load before each")
    add("--server-cpus", type=machine.cpu_list, default=[],
        help="cost: pin each server (every thread) to these CPUs, e.g. 0 (default: none)")
    add("--client-cpus", type=machine.cpu_list, default=[],
        help="cost: pin the client process to these CPUs, e.g. 1 (default: none)")
    machine.add_noise_args(parser, max_others=0.3, wait_idle=30.0, retries=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.items, args.rounds = 1, 5000, 1
        args.duration, args.warmup, args.retries, args.wait_idle = 2.0, 0.5, 0, 0.0
    return args


def classifier_repo(root: Path, versions: dict[int, str]) -> Path:
    """<root>/repo: the classifier at these versions (number -> kind), with the
    example's sidecar.json."""
    repo = root / "repo"
    for number, kind in versions.items():
        write_version(repo, MODEL, number, models.classifier_model(kind))
    (repo / MODEL / "sidecar.json").write_text(EXAMPLE_SETTINGS.read_text())
    return repo


def set_guard(server: Sidecar, model: str, **settings: str) -> dict[str, str]:
    reply = server.control().SetGuard(pb.SetGuardRequest(model=model, settings=settings,
                                                         actor="bench"), timeout=30)
    return dict(reply.state)


def guard_state(server: Sidecar, model: str) -> dict[str, str]:
    return dict(server.control().GetGuard(pb.GetGuardRequest(model=model), timeout=30).state)


# ---- detection ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    title: str
    rate: float  # open loop calls/s; 0: closed loop
    in_flight: int = 16


LOADS = (Load("~100 req/s (open loop)", 100.0), Load("max (closed loop, 16 in flight)", 0.0))


@dataclass(frozen=True, slots=True)
class Detection:
    sent: float  # Activate RPC sent (monotonic)
    returned: float  # ... and returned
    back_at: float  # the guard's rollback event arrived; NaN: never
    server_s: float  # rollback event time - activate event time (server clock)
    rule: str
    details: dict[str, str]


def unload_worse(server: Sidecar, truth_delay: float) -> None:
    """Unload the worse version if it is loaded (the warm previous version after a
    rollback), then let every truth due for requests it answered as a mirrored copy
    come in: the next activation starts with no evidence about it."""
    if WORSE in server.model(MODEL).loaded_versions:
        server.control().Unload(pb.UnloadRequest(model=MODEL, version=str(WORSE),
                                                 actor="bench"), timeout=60)
        time.sleep(truth_delay + 0.5)


def activate_worse(server: Sidecar, events: EventFollower) -> Detection:
    mark = events.mark()
    sent = time.monotonic()
    server.activate(MODEL, WORSE, force=True)
    returned = time.monotonic()
    back = events.wait(lambda e: e.action == "rollback" and e.actor == "guard"
                       and e.from_version.number == WORSE, after=mark,
                       timeout=EVENT_TIMEOUT_S)
    began = events.wait(lambda e: e.action == "activate" and e.to_version.number == WORSE,
                        after=mark, timeout=1.0)
    if back is None or began is None:
        return Detection(sent, returned, float("nan"), float("nan"), "none", {})
    details = dict(back.event.details)
    return Detection(sent, returned, back.at, back.event.time - began.event.time,
                     details.get("rule", "?"), details)


def detection_rows(load: Load, found: list[Detection], rec: Records, calm: tuple[float, float]
                   ) -> list[list[object]]:
    rate = int(np.count_nonzero(rec.calls_between(*calm))) / (calm[1] - calm[0])
    rows: list[list[object]] = []
    for k, d in enumerate(found):
        until = d.back_at if d.back_at == d.back_at else (
            found[k + 1].sent if k + 1 < len(found) else float("inf"))
        answers = rec.calls_between(d.sent, until) & (rec.version == WORSE)
        right = int(rec.right[answers].sum())
        count = int(np.count_nonzero(answers))
        g = d.details.get
        rows.append([load.title, k + 1, fmt(rate, 0), count,
                     fmt(right / count if count else float("nan"), 3),
                     rec.truths_between(d.sent, until, WORSE), g("drop.rows", "-"),
                     f"{g('drop.b', '-')} / {g('drop.c', '-')}", g("drop.e_value", "-"),
                     fmt(d.back_at - d.returned), fmt(d.server_s), d.rule])
    return rows


def part_detection(args: argparse.Namespace) -> None:
    print(f"\n## detection: classifier 'worse' activated as version {WORSE} over 'good'"
          f" version 1; {args.repeats} repeat(s) per load; truth {args.truth_delay:g} s after"
          " each answer")
    rows: list[list[object]] = []
    summary: list[list[object]] = []
    load_spec = FeedbackLoad(truth_delay=args.truth_delay)
    with scratch("quality-detect-") as root:
        repo = classifier_repo(root, {1: "good"})
        server = Sidecar(repo, "--no-watch")
        events = EventFollower(server)
        try:
            write_version(repo, MODEL, WORSE, models.classifier_model("worse"))
            set_guard(server, MODEL, cooldown_s="0")
            for load in LOADS:
                machine.wait_idle(args.wait_idle)
                with FeedbackPool(load_spec) as pool:
                    begin = time.monotonic() + 0.2
                    pool.start(server.address, Run(begin, begin + 3600, in_flight=load.in_flight,
                                                   rate=load.rate))
                    time.sleep(1.5)  # version 1 serves, and is judged by nobody
                    calm = (begin + 0.3, time.monotonic())
                    found = []
                    for _ in range(args.repeats):
                        unload_worse(server, args.truth_delay)
                        found.append(activate_worse(server, events))
                    pool.stop_event.set()
                    rec = pool.collect()
                if rec.failed:
                    print(f"  {rec.failed} calls failed: {rec.first_error}")
                part = detection_rows(load, found, rec, calm)
                rows += part
                truths = [float(str(r[5])) for r, d in zip(part, found, strict=True)
                          if d.back_at == d.back_at]
                secs = [d.back_at - d.returned for d in found if d.back_at == d.back_at]
                missed = sum(d.back_at != d.back_at for d in found)
                summary.append([load.title, len(found) - missed, missed,
                                fmt(median(truths), 0), fmt(max(truths, default=float("nan")), 0),
                                fmt(median(secs)), fmt(max(secs, default=float("nan")))])
        finally:
            events.close()
            server.stop()
    stats.table("Each activation of the worse version (client side, except 'paired rows',"
                " 'b / c' and 'e-value': the rollback event's evidence)",
                ["load", "repeat", "calm req/s", "v2 answers", "v2 accuracy (client)",
                 "truths for v2 answers", "paired rows at decision", "b / c", "e-value",
                 "Activate return -> rollback event s", "activate -> rollback (server) s",
                 "rule"], rows)
    stats.table("Detection per load (median and max over the repeats that rolled back)",
                ["load", "rolled back", "never", "truths median", "truths max",
                 "seconds median", "seconds max"], summary)
    print("truths for v2 answers: truth items for answers of version 2 sent before the rollback"
          " event arrived (items in flight included).\ntarget: rolled back"
          " within a few hundred feedback items at the defaults (min_samples 200: never"
          " fewer than 200 paired rows).")


# ---- equal --------------------------------------------------------------------------------


def part_equal(args: argparse.Namespace) -> None:
    print(f"\n## equal: classifier 'equal' activated as version 2 over 'good' version 1;"
          f" {args.items} truth items at 16 calls in flight")
    rows: list[list[object]] = []
    with scratch("quality-equal-") as root:
        repo = classifier_repo(root, {1: "good"})
        server = Sidecar(repo, "--no-watch")
        events = EventFollower(server)
        try:
            write_version(repo, MODEL, 2, models.classifier_model("equal"))
            set_guard(server, MODEL, cooldown_s="0", probation_s="86400")
            machine.wait_idle(args.wait_idle)
            mark = events.mark()
            server.activate(MODEL, 2)
            with FeedbackPool(FeedbackLoad(truth_delay=args.truth_delay)) as pool:
                meter = machine.CpuMeter([server.pid, *pool.pids, os.getpid()])
                begin = time.monotonic() + 0.2
                pool.start(server.address, Run(begin, begin + 3600, in_flight=16,
                                               max_truths=args.items))
                rec = pool.collect(timeout=3600 + 120)
                span = meter.stop()
            time.sleep(0.5)  # a rollback scheduled by the last items would show by now
            back = [a.event for a in events.events[mark:] if a.event.action == "rollback"]
            state = guard_state(server, MODEL)
        finally:
            events.close()
            server.stop()
    seconds = float(rec.truth_sent[-1] - begin) if rec.truth_sent.size else float("nan")
    v2 = rec.version == 2
    c = rec.counts
    rows.append([rec.truth_sent.size, c["matched"], c["paired"], c["unmatched"], c["invalid"],
                 fmt(seconds, 1), fmt(rec.truth_sent.size / seconds, 0),
                 fmt(int(rec.right[v2].sum()) / max(1, int(np.count_nonzero(v2))), 4),
                 state.get("quality_paired_rows", "-"), len(back),
                 fmt(span.of(server.pid) / max(seconds, 1e-9)),
                 fmt(span.others_cores)])
    stats.table("A same-quality version under 16 calls in flight with truth for every answer",
                ["truth items", "matched", "paired", "unmatched", "invalid", "seconds",
                 "items/s", "v2 accuracy (client)", "paired rows (server)",
                 "rollbacks of v2 (false)", "server cores", "others"], rows)
    for e in back:
        print(f"FALSE ROLLBACK: #{e.seq} by {e.actor}: {e.reason}")
    print(f"last verdict: {state.get('quality_verdict', '(none)')}")
    copies = {k: v for k, v in state.items() if k.startswith("feedback_copies")}
    print(f"paired copies: {json.dumps(copies)}; probation left:"
          f" {state.get('probation_left_s', state.get('probation_version', '-'))}")
    if rec.failed or rec.errors:
        print(f"ERRORS: {rec.failed} calls failed, {rec.errors}: {rec.first_error}")
    print("target: 0 false rollbacks over 10^5 feedback items")


# ---- cost ---------------------------------------------------------------------------------


#: variant -> the "quality" object of tiny's sidecar.json (None: no file)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "no quality": None,
    "quality, remembered (shadow_share 0)": {"output": "OUTPUT0", "shadow_share": 0},
    "quality, remembered + paired copies (defaults)": {"output": "OUTPUT0"},
}


@dataclass(frozen=True, slots=True)
class CostRun:
    round: int
    variant: str
    figures: Figures
    remembered: str  # ids remembered, from ctl guard's state
    copies: str  # paired copies offered / dropped


def cost_run(repos: dict[str, Path], pool: FeedbackPool, variant: str, number: int,
             args: argparse.Namespace) -> CostRun:
    server = Sidecar(repos[variant])
    if args.server_cpus:
        machine.pin(server.pid, args.server_cpus)
    try:
        begin = time.monotonic() + 0.2
        t0 = begin + args.warmup
        t1 = t0 + args.duration
        pool.start(server.address, Run(begin, t1, in_flight=16))
        time.sleep(max(0.0, t0 - time.monotonic()))
        meter = machine.CpuMeter([server.pid, *pool.pids, os.getpid()])
        time.sleep(max(0.0, t1 - time.monotonic()))
        span = meter.stop()
        rss = server.rss_mb()
        rec = pool.collect()
        state = guard_state(server, "tiny")
    finally:
        server.stop()
    samples = Samples(rec.started, rec.done, rec.version)
    f = Figures.of(samples, t0, t1, server_cpu_s=span.of(server.pid),
                   client_cpu_s=span.of(*pool.pids), others_cores=span.others_cores,
                   rss_mb=rss)
    if rec.failed:
        print(f"  {variant}: {rec.failed} failed: {rec.first_error}")
    print(f"  round {number} {variant:<48} {f.req_s:7.0f} req/s  p99 {f.p99_ms:6.3f} ms"
          f"  server {f.server_us_per_call:5.1f} us/call  others {f.others_cores:.2f}",
          flush=True)
    copies = (f"{state.get('feedback_copies_offered', '-')} /"
              f" {state.get('feedback_copies_dropped', '-')}")
    return CostRun(number, variant, f, state.get("feedback_ids_remembered", "-"), copies)


def part_cost(args: argparse.Namespace) -> None:
    pinned = (f"; server on CPUs {args.server_cpus}, client on {args.client_cpus}"
              if args.server_cpus or args.client_cpus else "")
    print(f"\n## cost: tiny batch 1, a unique id per call, 1 client process x 16 in flight;"
          f" {args.rounds} round(s) of {args.warmup:g} + {args.duration:g} s per variant,"
          f" order rotated{pinned}")
    names = list(VARIANTS)
    with scratch("quality-cost-") as root, FeedbackPool(
            FeedbackLoad(model="tiny", output="OUTPUT0", truth=False)) as pool:
        for pid in pool.pids if args.client_cpus else ():
            machine.pin(pid, args.client_cpus)
        repos = {}
        for k, (name, quality) in enumerate(VARIANTS.items()):
            repo = tiny_repo(root / f"v{k}")
            if quality is not None:
                (repo / "tiny" / "sidecar.json").write_text(json.dumps({"quality": quality}))
            repos[name] = repo
        kept, dropped = stats.rounds(
            args.rounds, args,
            lambda n: [cost_run(repos, pool, v, n, args)
                       for v in names[(n - 1) % 3:] + names[:(n - 1) % 3]],
            lambda r: r.figures.others_cores)
    stats.table("Each run (ids remembered and copies offered / dropped: the server's own"
                " counts at the end of the run, warm-up included)",
                ["round", "variant", "req/s", "p50 ms", "p99 ms", "server CPU us/call",
                 "ids remembered", "copies offered / dropped", "errors", "others"],
                [[stats.round_label(r.round, f.others_cores, args.max_others, r in dropped),
                  r.variant, fmt(f.req_s, 0), fmt(f.p50_ms, 3), fmt(f.p99_ms, 3),
                  fmt(f.server_us_per_call, 1), r.remembered, r.copies, f.errors,
                  fmt(f.others_cores)]
                 for r in kept + dropped for f in [r.figures]])

    med = stats.variant_table(
        "Cost of remembering answers (medians across rounds; x: ratio to no quality)", kept,
        names, p99_digits=3)
    remembered = ratio(med(names[1], "req_s"), med(names[0], "req_s"))
    per_round = [ratio(b.figures.req_s, a.figures.req_s) for a in kept if a.variant == names[0]
                 for b in kept if b.variant == names[1] and b.round == a.round]
    print(f"remembering: {remembered:.3f}x the req/s without quality (target >= 0.97x:"
          f" {'met' if remembered >= 0.97 else 'MISSED'}); per round"
          f" {' '.join(f'{x:.3f}' for x in per_round)} (median {median(per_round):.3f})")


def main(argv: Sequence[str] | None = None) -> int:
    return machine.run_parts({"detection": part_detection, "equal": part_equal,
                              "cost": part_cost}, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
