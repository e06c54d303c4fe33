"""GitOps benchmark: from a git change in the watched repository to the first answer.

This script owns the measurement of the GitOps target (a rollback by `git
revert` reaches the first answer of the version rolled back to within 2 s of
the working tree changing; figures in docs/performance.md, "GitOps").

Everything is real git (the `git` binary) in a temporary directory: a bare
`origin`, an `author` clone where versions are committed and pushed, and one of
two layouts watched by `sidecar serve` (its settle time at the default, or
--settle-ms):

- clone: a clone (`pod`) changed in place. Pickup: the author pushes a commit
  adding version N; `git pull` in the pod. Rollback: `git revert --no-edit HEAD`
  in the pod (then pushed, so the next pull is a fast-forward; not timed);
- git-sync: git-sync v4's layout, `current` a symlink to a detached worktree
  per commit. Publishing a commit: fetch it, `git worktree add` it, rename a
  new link over `current` (atomic), remove the old worktree. Pickup: the author
  pushes version N, which is published; rollback: the author reverts that
  commit and pushes, and the revert is published.

The server runs with its defaults but --no-guard (as tests/test_gitops.py
does; --guard leaves it on): the guard judges each new version's p99 against
the previous one's while it is on probation, and on this busy 2-core machine
the git work of the next step (a revert, a push, a worktree of tens of MB)
raised a 16 MB version's p99 enough for the latency rule to roll it back
before the revert, which then had nothing to roll back. Guard actions seen
during a run are printed.

The model (`tiny` by default, or `--model mlp`: tiny's answers plus a hidden
MLP of --megabytes whose contribution is multiplied by zero, so every answer is
still checked against tiny's weights of the version that gave it) has versions 1
and 2 at the start; round k adds version 2 + k and reverts it. One client calls
it in a tight loop (1 call in flight) for the whole run, each answer checked
against the version it names. Per round, the time from the git command's return
(`git pull`, `git revert`) or the link's rename (git-sync) to the first answer
from the new version (pickup) or from version 2 (rollback, the warm previous
version). The baseline, in the same run and server: a Rollback RPC by command
(no watcher, no settle time) from the moment it is sent to the first answer of
version 2; version N is then activated again by command before the revert.
Every step waits a random 0-0.5 s first (no phase lock with the watcher's
wake-ups).

    python bench/gitops.py [--quick] [--rounds N] [--settle-ms MS] [--model tiny|mlp]
                           [--layout clone|git-sync ...] [--guard] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from harness import machine, models, stats
from harness.clients import ClientPool, Plan, Samples, Workload
from harness.server import EventFollower, Sidecar, scratch
from harness.stats import fmt, median
from onnx import TensorProto, helper, numpy_helper
from serverlog import ServerLogError

TARGET_MS = 2000.0  # rollback by revert: working tree changed -> first answer
LAYOUTS = ("clone", "git-sync")
PREVIOUS = 2  # the version every rollback goes back to (the warm previous one)
JITTER_S = 0.5
EVENT_TIMEOUT_S = 20.0
GIT_ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           # model files are stored deflated, never delta-compressed (pack-objects spends
           # seconds searching deltas between MBs of random weights on every push and fetch)
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.bigFileThreshold",
           "GIT_CONFIG_VALUE_0": "1m"}
#: scenario key -> title, in the table's order
SCENARIOS = {
    "clone-pickup": "clone: `git pull` of a commit adding version N -> first answer of N",
    "clone-revert": "clone: `git revert HEAD` -> first answer of the previous version",
    "git-sync-pickup": "git-sync: link swapped to a commit adding N -> first answer of N",
    "git-sync-revert": "git-sync: link swapped to the revert -> first answer of the previous",
    "command-rollback": "baseline: Rollback RPC sent (no watcher) -> first answer of the"
                        " previous",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--rounds", type=int, default=5, help="pickup + rollback rounds per layout (default 5)")
    add("--settle-ms", type=int, default=None, metavar="MS",
        help="passed to the server as --watch-settle-ms (default: the server's, 500)")
    add("--model", choices=("tiny", "mlp"), default="tiny",
        help="tiny (a few hundred bytes; default) or mlp (--megabytes)")
    add("--megabytes", type=int, default=16, help="size of each mlp version (default 16)")
    add("--layout", action="append", choices=LAYOUTS,
        help="only this layout (repeatable; default both)")
    add("--guard", action="store_true",
        help="leave the guard on (default: --no-guard; see above)")
    add("--quick", action="store_true", help="a smoke test: 2 rounds, no idle wait")
    add("--wait-idle", type=float, default=10.0, metavar="S",
        help="before each layout, wait up to S s for an idle machine (default 10; 0: do"
        " not wait)")
    add("--json", type=Path, help="write every round's figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.wait_idle = 2, 0.0
    if args.rounds < 1 or args.megabytes < 1:
        parser.error("--rounds and --megabytes must be >= 1")
    return args


# ---- the model -------------------------------------------------------------------------


def mlp_model(version: int, megabytes: int) -> onnx.ModelProto:
    """tiny_model(version)'s answer plus a hidden MLP of about `megabytes` MB (one
    square weight holds the bytes) whose output is multiplied by zero: loading and
    computing cost what the size says, the answer is tiny's, checked as such."""
    width = max(16, int(np.sqrt(megabytes * 2**20 / 4)))
    w, b = models.tiny_weights(version)
    rng = np.random.default_rng(4000 + version)
    scale = np.float32(1 / np.sqrt(width))

    def init(name: str, array: Any) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name=name)

    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["tiny"]),
        helper.make_node("MatMul", ["INPUT0", "W_in"], ["h0"]),
        helper.make_node("Tanh", ["h0"], ["a0"]),
        helper.make_node("MatMul", ["a0", "W_hidden"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["a1"]),  # bounded: times zero is zero
        helper.make_node("MatMul", ["a1", "W_out"], ["h2"]),
        helper.make_node("Mul", ["h2", "ZERO"], ["nothing"]),
        helper.make_node("Add", ["tiny", "nothing"], ["OUTPUT0"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", k])
          for n, k in (("INPUT0", models.TINY_IN), ("OUTPUT0", models.TINY_OUT))]
    graph = helper.make_graph(nodes, f"mlp_v{version}", io[:1], io[1:], [
        init("W", w), init("B", b),
        init("W_in", rng.standard_normal((models.TINY_IN, width))),
        init("W_hidden", rng.standard_normal((width, width), dtype=np.float32) * scale),
        init("W_out", rng.standard_normal((width, models.TINY_OUT)) * scale),
        init("ZERO", np.zeros(1))])
    model = helper.make_model(graph, ir_version=models.IR_VERSION,
                              opset_imports=[helper.make_opsetid("", models.OPSET)],
                              producer_name="sidecar-bench")
    onnx.checker.check_model(model)
    return model


def model_maker(args: argparse.Namespace) -> Callable[[int], bytes]:
    if args.model == "tiny":
        return lambda v: bytes(models.tiny_model(v).SerializeToString())
    return lambda v: bytes(mlp_model(v, args.megabytes).SerializeToString())


# ---- git --------------------------------------------------------------------------------


def git(cwd: Path, *argv: str) -> str:
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", *argv], cwd=cwd,
                          env={**os.environ, **GIT_ENV}, capture_output=True, text=True,
                          check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(argv)} in {cwd}: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(slots=True)
class Git:
    """origin (bare) and author (a clone people commit in), and one layout that the
    sidecar watches (`served`): a clone changed in place, or git-sync's worktrees."""

    root: Path
    layout: str
    name: str
    make: Callable[[int], bytes]
    origin: Path = field(init=False)
    author: Path = field(init=False)
    served: Path = field(init=False)

    def __post_init__(self) -> None:
        self.origin, self.author = self.root / "origin.git", self.root / "author"
        git(self.root, "init", "-q", "--bare", str(self.origin))
        git(self.root, "clone", "-q", str(self.origin), str(self.author))
        for version in (1, PREVIOUS):
            self.put(version)
        self.push(f"{self.name}: versions 1 and {PREVIOUS}")
        if self.layout == "clone":
            self.served = self.root / "pod"
            git(self.root, "clone", "-q", str(self.origin), str(self.served))
        else:
            self.served = self.root / "sync" / "current"
            self.served.parent.mkdir()
            git(self.served.parent, "init", "-q", "repo")
            self.publish()

    def put(self, version: int) -> None:
        path = self.author / self.name / str(version) / "model.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(self.make(version))

    def push(self, message: str) -> None:
        git(self.author, "add", "-A")
        git(self.author, "commit", "-q", "-m", message)
        git(self.author, "push", "-q", "origin", "main")

    def publish(self) -> float:
        """git-sync v4 for origin's newest commit: fetch, a detached worktree under
        .worktrees/<sha>, a new link renamed over `current` (atomic), the old worktree
        removed. Returns the monotonic time the rename returned."""
        sync = self.served.parent
        # into a ref, so the next fetch tells what it has (fetches only new objects)
        git(sync / "repo", "fetch", "-q", str(self.origin), "+main:refs/remotes/origin/main")
        sha = git(sync / "repo", "rev-parse", "FETCH_HEAD")
        git(sync / "repo", "worktree", "add", "-q", "--detach", f"../.worktrees/{sha}", sha)
        old = os.readlink(self.served) if self.served.is_symlink() else ""
        (sync / "tmp-link").symlink_to(f".worktrees/{sha}")
        os.replace(sync / "tmp-link", self.served)
        changed = time.monotonic()
        if old and old != f".worktrees/{sha}":
            git(sync / "repo", "worktree", "remove", "--force", str(sync / old))
        return changed

    def add_version(self, version: int) -> tuple[float, float]:
        """Version `version` committed and pushed by the author, then taken by the
        served tree. Returns (taking it started, the tree changed), monotonic."""
        self.put(version)
        self.push(f"{self.name}: version {version}")
        time.sleep(random.uniform(0, JITTER_S))
        started = time.monotonic()
        if self.layout == "clone":
            git(self.served, "pull", "-q", "--ff-only", "origin", "main")
            return started, time.monotonic()
        return started, self.publish()

    def revert(self) -> tuple[float, float]:
        """The newest commit (the one that added the active version) reverted."""
        if self.layout == "git-sync":
            git(self.author, "revert", "--no-edit", "HEAD")
            git(self.author, "push", "-q", "origin", "main")
        time.sleep(random.uniform(0, JITTER_S))
        started = time.monotonic()
        if self.layout == "clone":
            git(self.served, "revert", "--no-edit", "HEAD")
            return started, time.monotonic()
        return started, self.publish()

    def share(self) -> None:
        """Clone layout: the pod's revert goes to origin and the author (not timed)."""
        if self.layout == "clone":
            git(self.served, "push", "-q", "origin", "HEAD:main")
            git(self.author, "pull", "-q", "--ff-only", "origin", "main")


# ---- one layout -------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    scenario: str
    round: int
    version: int  # the version whose first answer ends the step
    started: float  # the command started (monotonic)
    changed: float  # the tree changed / the RPC was sent: time zero
    until: float = float("inf")  # the next step started
    event_at: float = float("nan")  # the server's activate (or RPC return) arrived

    def first_answer_ms(self, samples: Samples) -> float:
        after = samples.between(self.started, self.until)
        hits = np.flatnonzero(after.version == self.version)
        return float((after.done[hits[0]] - self.changed) * 1e3) if hits.size else float("nan")


@dataclass(slots=True)
class LayoutRun:
    layout: str
    steps: list[Step]
    samples: Samples
    others_cores: float
    flags: list[str]
    guard_actions: list[str]


def wait_activate(events: EventFollower, mark: int, version: int) -> float:
    arrived = events.wait(lambda e: e.action == "activate" and e.to_version.number == version,
                          after=mark, timeout=EVENT_TIMEOUT_S)
    if arrived is None:
        seen = "".join(f"\n  {a.event.action} {a.event.from_version.number}"
                       f"->{a.event.to_version.number} ({a.event.actor}): {a.event.reason}"
                       for a in events.events[mark:])
        raise RuntimeError(f"no activation of version {version} within {EVENT_TIMEOUT_S:g} s;"
                           f" events meanwhile:{seen or ' none'}")
    return arrived.at


def run_layout(layout: str, args: argparse.Namespace) -> LayoutRun:
    name = args.model
    flags = [] if args.guard else ["--no-guard"]
    if args.settle_ms is not None:
        flags += ["--watch-settle-ms", str(args.settle_ms)]
    steps: list[Step] = []
    with scratch(f"bench-gitops-{layout}-") as root, ClientPool(Workload(model=name)) as pool:
        repo = Git(root, layout, name, model_maker(args))
        server = Sidecar(repo.served, *flags, name=f"sidecar-{layout}")
        events = EventFollower(server)
        try:
            meter = machine.CpuMeter([server.pid, *pool.pids, os.getpid()])
            begin = time.monotonic() + 0.2
            pool.start(server.address, Plan(begin, begin + 3600))
            time.sleep(1.0)  # the watch is live and the client warm

            def step(scenario: str, number: int, version: int, started: float,
                     changed: float) -> Step:
                if steps:
                    steps[-1].until = started
                steps.append(Step(f"{layout}-{scenario}" if scenario != "command-rollback"
                                  else scenario, number, version, started, changed))
                return steps[-1]

            for number in range(1, args.rounds + 1):
                version = PREVIOUS + number
                mark = events.mark()
                s = step("pickup", number, version, *repo.add_version(version))
                s.event_at = wait_activate(events, mark, version)
                time.sleep(0.3)
                time.sleep(random.uniform(0, JITTER_S))
                sent = time.monotonic()
                s = step("command-rollback", number, PREVIOUS, sent, sent)
                back = server.rollback(name)
                s.event_at = time.monotonic()
                if back.to_version.number != PREVIOUS:
                    raise RuntimeError(f"Rollback went to {back.to_version.number}")
                time.sleep(0.3)
                server.activate(name, version)  # as before the baseline, for the revert
                time.sleep(0.3)
                mark = events.mark()
                s = step("revert", number, PREVIOUS, *repo.revert())
                s.event_at = wait_activate(events, mark, PREVIOUS)
                time.sleep(0.3)
                repo.share()
                print(f"  {layout} round {number}/{args.rounds}: "
                      + ", ".join(f"{x.scenario} {fmt((x.event_at - x.changed) * 1e3, 0)} ms"
                                  for x in steps[-3:]) + " (to the server's event)",
                      flush=True)
            time.sleep(0.2)
            pool.stop_event.set()
            samples = pool.collect()
            others = meter.stop().others_cores
            guard = [f"{a.event.action} {a.event.from_version.number}->"
                     f"{a.event.to_version.number}: {a.event.reason}"
                     for a in events.events if a.event.actor == "guard"]
        finally:
            events.close()
            server.stop()
    return LayoutRun(layout, steps, samples, others, flags, guard)


# ---- report ------------------------------------------------------------------------------


def report(runs: Sequence[LayoutRun], args: argparse.Namespace) -> dict[str, Any]:
    rows: list[list[object]] = []
    out: dict[str, dict[str, Any]] = {}
    for key, title in SCENARIOS.items():
        steps = [(r, s) for r in runs for s in r.steps if s.scenario == key]
        if not steps:
            continue
        ms = [s.first_answer_ms(r.samples) for r, s in steps]
        seen = [x for x in ms if x == x]
        missed = len(ms) - len(seen)
        command = [(s.changed - s.started) * 1e3 for _, s in steps]
        layouts = {r.layout for r, _ in steps}
        failed = sum(r.samples.failed + r.samples.wrong for r in runs if r.layout in layouts)
        worst = max(seen) if seen else float("nan")
        target, met = "", ""
        if key.endswith("-revert"):
            target = f"<= {TARGET_MS:,.0f}"
            met = "met" if seen and not missed and worst <= TARGET_MS else "MISSED"
        rows.append([title, len(ms), fmt(median(seen), 0), fmt(worst, 0),
                     " ".join(fmt(x, 0) for x in ms), fmt(median(command), 0), missed, failed,
                     target, met])
        out[key] = {"title": title, "first_answer_ms": ms, "command_ms": command,
                    "p50_ms": median(seen), "max_ms": worst, "missed": missed,
                    "failed_requests": failed, "target_ms": TARGET_MS if target else None,
                    "met": met or None}
    settle = f"{args.settle_ms} ms" if args.settle_ms is not None else "the default (500 ms)"
    stats.table(f"Time zero -> first answer from the version served after the change (ms;"
                f" client side, 1 call in flight; model {args.model}"
                + (f" {args.megabytes} MB" if args.model == "mlp" else "")
                + f"; settle time {settle})",
                ["scenario", "n", "p50", "max", "per round", "command ms", "missed",
                 "failed requests", "target", "met"], rows)
    print("time zero: the git command returned (clone), the link was renamed (git-sync), the"
          " RPC was sent (baseline); command ms: how long `git pull` / `git revert` / the"
          " worktree and link took (0 for the RPC); failed requests: calls that failed or"
          " answered wrong during the layout's whole run (the baseline's: every run)")
    for r in runs:
        error = f"; first error: {r.samples.first_error}" if r.samples.first_error else ""
        print(f"{r.layout}: {r.samples.count} calls, failed {r.samples.failed}, wrong"
              f" {r.samples.wrong}{error}; other processes used {r.others_cores:.2f} cores"
              f" meanwhile; server flags: {' '.join(r.flags) or '(none)'}; guard actions:"
              f" {len(r.guard_actions)}" + "".join(f"\n  {g}" for g in r.guard_actions))
    reverts = [v for k, v in out.items() if k.endswith("-revert")]
    if reverts:
        ok = all(v["met"] == "met" for v in reverts)
        worst = max(float(v["max_ms"]) for v in reverts)
        print(f"\ntarget: a rollback by revert reaches the first answer within"
              f" {TARGET_MS / 1000:g} s of the working tree changing: worst"
              f" {fmt(worst, 0)} ms ({'met' if ok else 'MISSED'})")
    return out


def strict(value: Any) -> Any:
    """NaN and infinities as null: strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    info = machine.describe()
    print(machine.summary(info))
    layouts = [x for x in LAYOUTS if not args.layout or x in args.layout]
    started = time.monotonic()
    runs = []
    try:
        for layout in layouts:
            print(f"- {layout}: {args.rounds} rounds, model {args.model}", flush=True)
            machine.wait_idle(args.wait_idle)
            runs.append(run_layout(layout, args))
    except (RuntimeError, ServerLogError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    out = report(runs, args)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(strict({
            "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
            "scenarios": out,
            "runs": [{"layout": r.layout, "calls": r.samples.count, "failed": r.samples.failed,
                      "wrong": r.samples.wrong, "others_cores": r.others_cores,
                      "server_flags": r.flags, "guard_actions": r.guard_actions,
                      "steps": [asdict(s) | {"first_answer_ms": s.first_answer_ms(r.samples)}
                                for s in r.steps]} for r in runs]}),
            indent=2) + "\n")
    failed = sum(r.samples.failed + r.samples.wrong for r in runs)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
