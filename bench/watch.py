"""Watcher benchmark: from the last byte of a new version on disk to its first answer.

This script owns the measurement of the design's "Watcher" target (a complete
new version serves within 1 s plus the settle time after its last byte;
figures in docs/performance-lifecycle.md).

For each watcher configuration (inotify or --watch-poll at 100 ms and the
default 500 ms; --watch-settle-ms at the default 500 and at 200) one server
serves `tiny` (versions 1 and 2) while one client calls it in a tight loop
(1 call in flight, each answer checked against the weights of the version it
names). Then, repeatedly, a new highest version (tiny_model(n), n = 3, 4, ...)
is published in one of three ways:

- rename: written to a staging folder beside the repository, then the version
  folder renamed into place (the file's mtime is a few ms old);
- rename-old: the same, but the staged file's mtime set 10 s in the past, as a
  copy that keeps times (`cp -p`, `rsync -t`) or a staging done earlier leaves it;
- copy: written in place, in 10 chunks over 1 s (a slow copy into the folder).

"Last byte" is the moment the rename returned (rename modes) or the file was
closed after its last chunk (copy). Each publication waits a random 0-0.5 s
first, so it falls anywhere in the watcher's poll or timeout cycle. Per
publication: the time to the first answer that names the new version (client
side), and to the `activate` event arriving on WatchEvents. A copy activated
before its last byte would be a bug (a half-written file loaded): it is
counted as "early".

    python bench/watch.py [--quick] [--repeats N] [--case NAME ...] [--mode M ...]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import machine, models, stats
from harness.clients import ClientPool, Plan, Samples, Workload
from harness.server import EventFollower, Sidecar, scratch, tiny_repo
from harness.stats import fmt, median

MODEL = "tiny"
MODES = ("rename", "rename-old", "copy")
COPY_S = 1.0
COPY_CHUNKS = 10
JITTER_S = 0.5  # random wait before each publication
GRACE_S = 3.0  # beyond copy time + settle + 1 s: a publication not seen by then is missed


@dataclass(frozen=True, slots=True)
class Case:
    key: str
    title: str
    flags: tuple[str, ...]
    settle_ms: int


CASES = (
    Case("inotify-500", "inotify, settle 500 ms (defaults)", (), 500),
    Case("inotify-200", "inotify, settle 200 ms", ("--watch-settle-ms", "200"), 200),
    Case("poll100-500", "poll 100 ms, settle 500 ms",
         ("--watch-poll", "--watch-poll-ms", "100"), 500),
    Case("poll500-500", "poll 500 ms (default interval), settle 500 ms", ("--watch-poll",), 500),
    Case("poll100-200", "poll 100 ms, settle 200 ms",
         ("--watch-poll", "--watch-poll-ms", "100", "--watch-settle-ms", "200"), 200),
)


@dataclass(frozen=True, slots=True)
class Publication:
    case: str
    mode: str
    version: int
    last_byte: float  # monotonic
    event_at: float  # monotonic arrival of the activate event; NaN: none
    early: bool  # activated (or a load attempted) before the last byte


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5,
                        help="publications per case and mode (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: no idle wait, 1 repeat, two configurations"
                        " (inotify-200, poll100-200)")
    parser.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                        help="before each case, wait up to S s for an idle machine (default"
                        " 30; 0: do not wait)")
    parser.add_argument("--case", action="append", choices=[c.key for c in CASES],
                        help="only this watcher configuration (repeatable; default all)")
    parser.add_argument("--mode", action="append", choices=MODES,
                        help="only this way of publishing (repeatable; default all)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.wait_idle = 1, 0.0
        args.case = args.case or ["inotify-200", "poll100-200"]
    return args


# ---- publishing a version ---------------------------------------------------------------


def model_bytes(version: int) -> bytes:
    data: bytes = models.tiny_model(version).SerializeToString()
    return data


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def publish_rename(repo: Path, staging: Path, version: int, *, old: bool) -> float:
    folder = staging / str(version)
    write_file(folder / "model.onnx", model_bytes(version))
    if old:
        past = time.time() - 10
        os.utime(folder / "model.onnx", (past, past))
    os.rename(folder, repo / MODEL / str(version))
    return time.monotonic()


def publish_copy(repo: Path, version: int) -> float:
    data = model_bytes(version)
    path = repo / MODEL / str(version) / "model.onnx"
    path.parent.mkdir()
    step = -(-len(data) // COPY_CHUNKS)
    with open(path, "wb") as f:
        for k in range(0, len(data), step):
            if k:
                time.sleep(COPY_S / COPY_CHUNKS)
            f.write(data[k:k + step])
            f.flush()
    return time.monotonic()


def publisher(mode: str, repo: Path, staging: Path) -> Callable[[int], float]:
    if mode == "copy":
        return lambda v: publish_copy(repo, v)
    return lambda v: publish_rename(repo, staging, v, old=mode == "rename-old")


# ---- one watcher configuration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseRun:
    published: list[Publication]
    samples: Samples
    others_cores: float  # CPU cores other processes used during the case


def run_case(case: Case, modes: Sequence[str], repeats: int) -> CaseRun:
    published: list[Publication] = []
    with scratch("lifecycle-watch-") as root, ClientPool(Workload()) as pool:
        repo = tiny_repo(root)
        server = Sidecar(repo, *case.flags)
        events = EventFollower(server)
        try:
            meter = machine.CpuMeter([server.pid, *pool.pids, os.getpid()])
            begin = time.monotonic() + 0.2
            pool.start(server.address, Plan(begin, begin + 3600))
            time.sleep(1.0)  # the watch is live and the client warm
            version = 3
            for mode in modes:
                publish = publisher(mode, repo, root / "staging")
                for _ in range(repeats):
                    published.append(publish_one(case, mode, version, publish, events))
                    version += 1
            time.sleep(0.2)
            pool.stop_event.set()
            samples = pool.collect()
            others = meter.stop().others_cores
        finally:
            events.close()
            server.stop()
    return CaseRun(published, samples, others)


def publish_one(case: Case, mode: str, version: int, publish: Callable[[int], float],
                events: EventFollower) -> Publication:
    time.sleep(random.uniform(0, JITTER_S))  # no phase lock with the watcher's wake-ups
    mark = events.mark()
    last_byte = publish(version)
    timeout = (COPY_S if mode == "copy" else 0) + case.settle_ms / 1000 + GRACE_S
    arrived = events.wait(lambda e: e.action == "activate" and e.to_version.number == version,
                          after=mark, timeout=timeout)
    early = any(a.at < last_byte and a.event.to_version.number == version
                and a.event.action in ("activate", "load", "load-failed")
                for a in events.events[mark:])
    time.sleep(0.3)  # the client's next answers, and a quiet watcher, before the next one
    return Publication(case.key, mode, version, last_byte,
                       arrived.at if arrived else float("nan"), early)


# ---- report ------------------------------------------------------------------------------------


def first_answer_ms(samples: Samples, p: Publication) -> float:
    after = samples.between(p.last_byte, float("inf"))
    hits = np.flatnonzero(after.version == p.version)
    return float((after.done[hits[0]] - p.last_byte) * 1e3) if hits.size else float("nan")


def report(cases: Sequence[Case], results: dict[str, CaseRun], modes: Sequence[str]) -> None:
    rows = []
    for case in cases:
        published, samples = results[case.key].published, results[case.key].samples
        for mode in modes:
            mine = [p for p in published if p.mode == mode]
            answer = [first_answer_ms(samples, p) for p in mine]
            event = [(p.event_at - p.last_byte) * 1e3 for p in mine]
            missed = sum(1 for a in answer if a != a)
            seen = [a for a in answer if a == a]
            target = 1000 + case.settle_ms
            worst = max(seen) if seen else float("nan")
            met = "yes" if seen and not missed and worst <= target else "NO"
            rows.append([case.title, mode, len(mine), fmt(median(seen), 0), fmt(worst, 0),
                         fmt(median([e for e in event if e == e]), 0), missed,
                         sum(p.early for p in mine), f"{target}", met,
                         fmt(results[case.key].others_cores)])
        if samples.failed or samples.wrong:
            print(f"{case.title}: client calls failed {samples.failed}, wrong {samples.wrong}:"
                  f" {samples.first_error}")
    stats.table("Last byte -> first answer from the new version (ms; client side), and ->"
                " activate event",
                ["watcher", "publish", "n", "answer median", "answer max", "event median",
                 "missed", "early", "target (1 s + settle)", "met", "others"], rows)
    print("others: CPU cores used by other processes during the case")


def run(args: argparse.Namespace) -> None:
    cases = [c for c in CASES if not args.case or c.key in args.case]
    modes = [m for m in MODES if not args.mode or m in args.mode]
    results = {}
    for case in cases:
        print(f"- {case.title}: {args.repeats} x {', '.join(modes)}", flush=True)
        machine.wait_idle(args.wait_idle)
        results[case.key] = run_case(case, modes, args.repeats)
    report(cases, results, modes)


def main(argv: Sequence[str] | None = None) -> int:
    return machine.run_parts({"watch": run}, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
