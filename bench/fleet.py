"""Fleet benchmark: from a command (or a guard decision) to the last replica's first answer.

This script owns the measurements of fleet mode's targets (figures in
docs/performance.md, "Fleets: from a command to the last replica"): the time
from a command (or a guard decision) to the last replica's first answer from the
new version, under 1 s on loopback with 5 replicas; and the cost of fleet mode on
the request path: none measurable.

Everything is real: one etcd (Debian's `etcd`, started by tests/etcd_server.py's
EtcdServer on free loopback ports, killed at the end) and `sidecar serve`
subprocesses on 127.0.0.1:0, each with its own copy of the model repository and
its own --state-dir, as pods have. Every replica (and the baseline) has one
client process calling `tiny` batch 1 at a fixed rate (--rate calls/s, open
loop: calls start on schedule whether or not earlier ones returned; the
resolution of every "first answer" figure is 1/rate), each answer checked
against the weights of the version it names. Inputs have x[:, 0] <= 0, so
buggy_model answers them as tiny does. Each repository holds `tiny/sidecar.json`
with the guard's latency rule out of reach (latency_min_delta_ms 60000; on this
busy 2-core machine a p99 spike could otherwise roll a version back in the
middle of a round, as bench/gitops.py found) and cooldown_s 0; the other rules
are at their defaults.

- command: --replicas sidecars in one fleet (versions 1..3 on disk, 3 active),
  and beside them a single sidecar without a fleet (the baseline, same
  repository and flags). Versions 1 and 3 are activated once each first (not
  measured), so every measured command swaps two warm versions. Per round, an
  `Activate` of version 1 or 3 in turn (RPC ModelControl.Activate, actor
  `bench`) is sent to one replica (round-robin): from just before the RPC is sent
  to the first answer of the new version on each replica; the last replica's is
  the figure the target is about. Then the same Activate on the baseline, to its
  first answer. Each round waits a random 0-0.5 s first.
- guard: a fresh fleet of --replicas sidecars (versions 1 and 2 on disk, 2
  active). Per round, buggy_model(N) (N = 3, 4, ...: new bytes each round, since
  the quarantine makes a digest unusable afterwards) appears as version N in
  every repository (staged beside it, renamed in, as a sync would bring it);
  every replica serves it. Then a second client process sends one replica
  (round-robin) inputs with x[:, 0] > 0, which version N fails, until that
  replica's guard rolls back. Time zero is the guard's `rollback` event on that
  replica (its own time, from WatchEvents; the moment it arrived here is shown
  too); each replica's first answer of version 2 is timed from it. The origin's
  own first answer (a local rollback) is the baseline without the fleet.
- cost: two sidecars serving tiny version 1, one with --fleet-etcd (a fleet of
  one) and one without, both running (the same processes, the same etcd; a fresh
  pair every round, as bench/run.py starts a fresh server per run, so neither
  process's luck lasts the whole part: one run on long-lived servers saw the
  fleet one 7-9 % dearer per call in every round, another 4 % cheaper); per
  round, one client process with 16 calls in flight against each in turn
  (--cost-duration s after a 1 s warm-up; the order flips every round): req/s,
  p50, p99 and server CPU per call side by side, with the ratio. "Within noise":
  the fleet's median req/s at least (1 - tol) x the plain one's, its p99 and CPU
  per call at most (1 + tol) x, where tol is the plain server's own spread
  across rounds ((max - min) / median) of that figure, at least 5 % (10 % for
  p99: bench/run.py's bounds). Nothing of fleet mode is on the request path by
  construction (the link works beside it: a watch, a lease's keepalive); CPU per
  call is the steadiest of the three on a shared machine. By default (2+ cores)
  both servers are pinned to CPU 0 and the client to CPU 1 (`--server-cpus`,
  `--client-cpus`, as bench/run.py's; '' for none): unpinned, the per-round req/s
  ratios on this shared 2-core machine scattered over 0.70-1.95x; pinned, 1.00-1.04x
  in 9 of 11 rounds.

Timings are printed, never asserted; met/MISSED is printed against the targets.

    python bench/fleet.py [--quick] [--replicas N] [--rounds R] [--guard-rounds G]
                          [--rate CALLS_S] [--part command|guard|cost ...] [--json FILE]
                          [--cost-rounds N] [--cost-duration S] [--server-cpus CPUS]
                          [--client-cpus CPUS] [--max-others C] [--wait-idle S] [--retries N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import machine, models, stats
from harness.clients import ClientPool, Plan, Samples, Workload
from harness.server import EventFollower, Sidecar, scratch, write_version
from harness.stats import Figures, fmt, median, ratio
from serverlog import ServerLogError

MODEL = "tiny"
TARGET_MS = 1000.0  # command or guard decision -> last replica's first answer (5 replicas)
TARGET_REPLICAS = 5
MIN_RPS_TOL, MIN_P99_TOL = 0.05, 0.10  # the request path's noise floors (bench/run.py's)
PREVIOUS = 2  # guard part: the version every guard rollback goes back to
EVENT_TIMEOUT_S = 20.0
JITTER_S = 0.5
#: x[:, 0] <= 0: tiny's answer from every version, buggy_model's included
GOOD_INPUT = np.full((1, models.TINY_IN), -1.0, dtype=np.float32)
BAD_INPUT = np.ones((1, models.TINY_IN), dtype=np.float32)  # fails buggy_model
SETTINGS = {"guard": {"latency_min_delta_ms": 60000, "cooldown_s": 0}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--part", action="append", choices=("command", "guard", "cost"),
        help="run only this part (repeatable; default all)")
    add("--replicas", type=int, default=TARGET_REPLICAS,
        help=f"replicas in the fleet (default {TARGET_REPLICAS})")
    add("--rounds", type=int, default=5, help="command: rounds (default 5)")
    add("--guard-rounds", type=int, default=3, help="guard: rounds (default 3)")
    add("--rate", type=float, default=100.0,
        help="calls/s of each replica's client (open loop; default 100)")
    add("--fail-rate", type=float, default=100.0,
        help="guard: calls/s of failing requests to the origin replica (default 100)")
    add("--cost-rounds", type=int, default=3, help="cost: rounds (default 3)")
    add("--cost-duration", type=float, default=3.0,
        help="cost: measured seconds per server and round (default 3)")
    two = (os.cpu_count() or 1) >= 2
    add("--server-cpus", type=machine.cpu_list, default=[0] if two else [],
        help="cost: pin both servers (every thread) to these CPUs (default 0 on a machine"
        " of 2+ cores; '' for none)")
    add("--client-cpus", type=machine.cpu_list, default=[1] if two else [],
        help="cost: pin the client process to these CPUs (default 1 on a machine of 2+"
        " cores; '' for none)")
    add("--quick", action="store_true",
        help="a smoke test: 2 command rounds, 1 guard round, 1 cost round of 1.5 s, no idle"
        " wait")
    add("--json", type=Path, help="write every round's figures to this file")
    machine.add_noise_args(parser, max_others=0.3, wait_idle=10.0, retries=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.guard_rounds, args.cost_rounds, args.cost_duration = 2, 1, 1, 1.5
        args.wait_idle, args.retries = 0.0, 0
    if min(args.replicas, args.rounds, args.guard_rounds, args.cost_rounds) < 1 \
            or args.rate <= 0 or args.fail_rate <= 0 or args.cost_duration <= 0:
        parser.error("--replicas, --rounds, --guard-rounds, --cost-rounds >= 1 and rates and"
                     " --cost-duration > 0 please")
    return args


# ---- processes: etcd, replicas, their clients -----------------------------------------


def wall_to_monotonic(t: float) -> float:
    """A server's event time (unix seconds) on this machine's monotonic clock."""
    return t - (time.time() - time.monotonic())


@contextmanager
def etcd(root: Path) -> Iterator[Any]:
    """tests/etcd_server.py's EtcdServer (tests/ is on sys.path through the harness)."""
    from etcd_server import EtcdServer, EtcdServerError

    try:
        server = EtcdServer(root / "etcd")
    except EtcdServerError as exc:
        raise RuntimeError(f"cannot start etcd: {exc}") from None
    try:
        yield server
    finally:
        server.stop()


def repository(path: Path, versions: Sequence[int]) -> Path:
    for v in versions:
        write_version(path, MODEL, v, models.tiny_model(v))
    (path / MODEL / "sidecar.json").write_text(json.dumps(SETTINGS))
    return path


@dataclass(slots=True)
class Node:
    """One sidecar (a replica, or the baseline), its event stream and its client."""

    name: str
    server: Sidecar
    events: EventFollower
    pool: ClientPool
    samples: Samples | None = None

    def first(self, version: int, t0: float, until: float = float("inf")) -> float:
        """Time (monotonic) of the first answer from `version` that ended in [t0, until)."""
        assert self.samples is not None
        hits = self.samples.between(t0, until)
        found = np.flatnonzero(hits.version == version)
        return float(hits.done[found[0]]) if found.size else float("nan")

    def wait(self, predicate: Callable[[Any], bool], mark: int, what: str) -> Any:
        arrived = self.events.wait(predicate, after=mark, timeout=EVENT_TIMEOUT_S)
        if arrived is None:
            seen = "".join(f"\n  {a.event.action} {a.event.from_version.number}"
                           f"->{a.event.to_version.number} ({a.event.actor}): {a.event.reason}"
                           for a in self.events.events[mark:])
            raise RuntimeError(f"{self.name}: no {what} within {EVENT_TIMEOUT_S:g} s; events"
                               f" meanwhile:{seen or ' none'}")
        return arrived


def start_nodes(stack: ExitStack, specs: Sequence[tuple[str, Path, Sequence[str]]]
                ) -> list[Node]:
    """Sidecars (name, repository, flags) and their clients (started by `start_clients`),
    stopped by `stack`. Every process is started before any event stream: a fork while
    gRPC threads run makes gRPC skip its fork handlers (and say so)."""
    pools = [stack.enter_context(ClientPool(Workload(data=GOOD_INPUT))) for _ in specs]
    servers = []
    for name, repo, flags in specs:
        # from the main thread: a server is signalled when the thread that started it
        # ends (harness.server._die_with_parent), so never from a worker thread
        servers.append(Sidecar(repo, *flags, name=f"fleet-{name}"))
        stack.callback(servers[-1].stop)
    nodes = []
    for (name, _, _), server, pool in zip(specs, servers, pools, strict=True):
        events = EventFollower(server)
        stack.callback(events.close)
        nodes.append(Node(name, server, events, pool))
    return nodes


def replica_names(count: int) -> list[str]:
    return [chr(ord("a") + k) if count <= 26 else f"r{k}" for k in range(count)]


def fleet_specs(root: Path, store: Any, fleet: str, count: int, versions: Sequence[int]
                ) -> list[tuple[str, Path, Sequence[str]]]:
    return [(n, repository(root / n / "repo", versions),
             ("--fleet-etcd", store.endpoint, "--fleet-name", fleet, "--fleet-replica", n))
            for n in replica_names(count)]


def start_clients(nodes: Sequence[Node], rate: float) -> None:
    begin = time.monotonic() + 0.2
    for node in nodes:
        node.pool.start(node.server.address, Plan(begin, begin + 3600, rate=rate))
    time.sleep(1.0)  # every client connected and warm


def stop_clients(nodes: Sequence[Node]) -> None:
    for node in nodes:
        node.pool.stop_event.set()
    for node in nodes:
        node.samples = node.pool.collect()


def client_errors(nodes: Sequence[Node]) -> tuple[int, int, str]:
    failed = sum(n.samples.failed for n in nodes if n.samples)
    wrong = sum(n.samples.wrong for n in nodes if n.samples)
    first = next((f"{n.name}: {n.samples.first_error}" for n in nodes
                  if n.samples and n.samples.first_error), "")
    return failed, wrong, first


def cpu_meter(nodes: Sequence[Node]) -> Callable[[], dict[str, float]]:
    """Started now; the function returns the mean cores the nodes' servers and their
    clients used since, and every other process (etcd too; this one not)."""
    servers = [x.server.pid for x in nodes]
    clients = [p for x in nodes for p in x.pool.pids]
    m = machine.CpuMeter([*servers, *clients, os.getpid()])

    def stop() -> dict[str, float]:
        span = m.stop()
        return {"servers_cores": span.of(*servers) / span.seconds,
                "clients_cores": span.of(*clients) / span.seconds,
                "others_cores": span.others_cores}

    return stop


def cpu_note(cpu: dict[str, float]) -> str:
    return (f"CPU meanwhile: the sidecars {cpu['servers_cores']:.2f} cores, their clients"
            f" {cpu['clients_cores']:.2f}, every other process (etcd included)"
            f" {cpu['others_cores']:.2f}")


# ---- command --------------------------------------------------------------------------


@dataclass(slots=True)
class CommandRound:
    round: int
    origin: str
    version: int
    sent: float
    returned: float
    total_ms: float  # SwapResponse.total_ms (the command inside the origin)
    events_ms: list[float]  # per replica: RPC sent -> its activate event arrived here
    base_sent: float
    base_returned: float
    base_total_ms: float
    until: float = float("inf")  # the next round's command was sent
    base_until: float = float("inf")
    answers_ms: list[float] = field(default_factory=list)  # per replica
    base_answer_ms: float = float("nan")

    @property
    def last_ms(self) -> float:
        return max(self.answers_ms) if self.answers_ms else float("nan")


def activate(node: Node, version: int, nodes: Sequence[Node]) -> tuple[float, float, Any,
                                                                        list[float]]:
    """Activate `version` on `node`; wait for it on every node of `nodes`. Returns (sent,
    returned, the SwapResponse, per node: the monotonic time its event arrived)."""
    marks = [n.events.mark() for n in nodes]
    sent = time.monotonic()
    response = node.server.activate(MODEL, version)
    returned = time.monotonic()
    arrived = [n.wait(lambda e: e.action == "activate" and e.to_version.number == version,
                      mark, f"activation of version {version}").at
               for n, mark in zip(nodes, marks, strict=True)]
    return sent, returned, response, arrived


def part_command(args: argparse.Namespace) -> dict[str, Any]:
    n = args.replicas
    print(f"\n## command: {n} replicas in one fleet + 1 sidecar without a fleet (baseline);"
          f" {args.rounds} rounds of Activate 1 / 3 to one replica (round-robin); each client"
          f" {args.rate:g} calls/s", flush=True)
    machine.wait_idle(args.wait_idle)
    rounds: list[CommandRound] = []
    with scratch("bench-fleet-command-") as root, ExitStack() as stack:
        store = stack.enter_context(etcd(root))
        nodes = start_nodes(stack, [
            *fleet_specs(root, store, "bench-command", n, (1, 2, 3)),
            ("baseline", repository(root / "baseline" / "repo", (1, 2, 3)), ())])
        replicas, base = nodes[:-1], nodes[-1]
        start_clients(nodes, args.rate)
        for v in (1, 3):  # warm: every measured command swaps two warm versions
            activate(replicas[0], v, replicas)
            activate(base, v, [base])
        cpu_stop = cpu_meter(nodes)
        for k in range(args.rounds):
            version = 1 if k % 2 == 0 else 3
            origin = replicas[k % n]
            time.sleep(0.3 + random.uniform(0, JITTER_S))
            sent, returned, response, arrived = activate(origin, version, replicas)
            time.sleep(0.3 + random.uniform(0, JITTER_S))
            b_sent, b_returned, b_response, _ = activate(base, version, [base])
            if rounds:
                rounds[-1].until, rounds[-1].base_until = sent, b_sent
            rounds.append(CommandRound(k + 1, origin.name, version, sent,
                                       returned, response.total_ms,
                                       [(a - sent) * 1e3 for a in arrived], b_sent,
                                       b_returned, b_response.total_ms))
        time.sleep(0.3)
        cpu = cpu_stop()
        stop_clients(nodes)
        for r in rounds:
            r.answers_ms = [(x.first(r.version, r.sent, r.until) - r.sent) * 1e3
                            for x in replicas]
            r.base_answer_ms = (base.first(r.version, r.base_sent, r.base_until)
                                - r.base_sent) * 1e3
        failed, wrong, first = client_errors(nodes)
    return report_command(rounds, n, cpu, failed, wrong, first, args)


def report_command(rounds: list[CommandRound], n: int, cpu: dict[str, float],
                   failed: int,
                   wrong: int, first: str, args: argparse.Namespace) -> dict[str, Any]:
    names = replica_names(n)
    stats.table(f"Each round: Activate RPC sent -> first answer of the new version (ms; client"
                f" side, {args.rate:g} calls/s per replica)",
                ["round", "to", "sent to", *names, "last replica", "RPC ms",
                 "baseline (no fleet)"],
                [[r.round, r.version, r.origin, *(fmt(a, 0) for a in r.answers_ms),
                  fmt(r.last_ms, 0), fmt((r.returned - r.sent) * 1e3, 0),
                  fmt(r.base_answer_ms, 0)] for r in rounds])

    def row(label: str, values: list[float], target: str = "", met: str = "") -> list[str]:
        return [label, fmt(median(values), 0), fmt(max(values) if values else float("nan"), 0),
                " ".join(fmt(x, 0) for x in values), target, met]

    last = [r.last_ms for r in rounds]
    missed = sum(1 for x in last if x != x)
    seen = [x for x in last if x == x]
    met = "met" if seen and not missed and max(seen) < TARGET_MS else "MISSED"
    origin = [r.answers_ms[names.index(r.origin)] for r in rounds]
    events = [max(r.events_ms) for r in rounds]
    base = [r.base_answer_ms for r in rounds]
    rpc = [(r.returned - r.sent) * 1e3 for r in rounds]
    base_rpc = [(r.base_returned - r.base_sent) * 1e3 for r in rounds]
    stats.table(f"Command -> first answer, {n} replicas (ms; medians and max over"
                f" {len(rounds)} rounds)", ["figure", "p50", "max", "per round", "target", "met"],
                [row("RPC sent -> last replica's first answer of the new version", last,
                     f"< {TARGET_MS:,.0f}", met),
                 row("RPC sent -> the replica it was sent to: first answer", origin),
                 row("RPC sent -> last replica's activate event (WatchEvents, arrival here)",
                     events),
                 row("Activate RPC round trip (fleet: CAS in etcd, then the swap)", rpc),
                 row("the command inside the replica (SwapResponse.total_ms)",
                     [r.total_ms for r in rounds]),
                 row("baseline, no fleet: RPC sent -> first answer", base),
                 row("baseline, no fleet: Activate RPC round trip", base_rpc),
                 row("fleet's added latency (last replica - baseline, per round)",
                     [a - b for a, b in zip(last, base, strict=True)])])
    print(f"client calls failed {failed}, wrong {wrong}{'; first: ' + first if first else ''};"
          f" {cpu_note(cpu)}")
    return {"replicas": n, "rounds": [asdict(r) | {"last_ms": r.last_ms} for r in rounds],
            "last_p50_ms": median(seen), "last_max_ms": max(seen) if seen else None,
            "baseline_p50_ms": median(base), "rpc_p50_ms": median(rpc),
            "missed": missed, "met": met, "failed": failed, "wrong": wrong, **cpu}


# ---- guard ----------------------------------------------------------------------------


@dataclass(slots=True)
class GuardRound:
    round: int
    origin: str
    version: int
    released: float  # every replica serves `version` (monotonic)
    decided: float  # the guard's rollback event, its own time (on this monotonic clock)
    arrived: float  # ... the moment it arrived here
    failing_calls: int  # failing requests sent before the rollback
    rule: str
    until: float = float("inf")
    answers_ms: list[float] = field(default_factory=list)  # per replica, from `decided`

    @property
    def last_ms(self) -> float:
        return max(self.answers_ms) if self.answers_ms else float("nan")


def release(root: Path, replicas: Sequence[Node], version: int) -> float:
    """buggy_model(version) renamed into every repository; returns when all serve it."""
    marks = [r.events.mark() for r in replicas]
    for r in replicas:
        staging = root / r.name / "staging"
        models.write_model(models.buggy_model(version), staging, MODEL, version)
        (staging / MODEL / str(version)).rename(root / r.name / "repo" / MODEL / str(version))
    for r, mark in zip(replicas, marks, strict=True):
        r.wait(lambda e: e.action == "activate" and e.to_version.number == version, mark,
               f"activation of version {version}")
    return time.monotonic()


def guard_round(k: int, root: Path, replicas: Sequence[Node], failing: ClientPool,
                args: argparse.Namespace) -> GuardRound:
    version = PREVIOUS + 1 + k
    origin = replicas[k % len(replicas)]
    released = release(root, replicas, version)
    time.sleep(0.5 + random.uniform(0, JITTER_S))  # every client answered by `version`
    marks = [r.events.mark() for r in replicas]
    begin = time.monotonic() + 0.05
    failing.start(origin.server.address, Plan(begin, begin + 60, rate=args.fail_rate))
    try:
        back = origin.wait(lambda e: e.action == "rollback" and e.actor == "guard"
                           and e.from_version.number == version, marks[k % len(replicas)],
                           f"guard rollback of version {version}")
    finally:
        failing.stop_event.set()
        sent = failing.collect()
    decided = wall_to_monotonic(back.event.time)
    for r, mark in zip(replicas, marks, strict=True):
        r.wait(lambda e: e.to_version.number == PREVIOUS and e.action in ("activate",
                                                                          "rollback"),
               mark, f"version {PREVIOUS} serving again")
    details = back.event.details
    return GuardRound(k + 1, origin.name, version, released, decided,
                      back.at, int(np.count_nonzero(sent.started < decided)),
                      f"{details.get('rule', '?')} {details.get('failures', '?')}/"
                      f"{details.get('requests', '?')}")


def part_guard(args: argparse.Namespace) -> dict[str, Any]:
    n = args.replicas
    print(f"\n## guard: {n} replicas in one fleet; {args.guard_rounds} rounds of a buggy"
          f" version released to all and failed by one replica's requests"
          f" ({args.fail_rate:g} calls/s); each good client {args.rate:g} calls/s", flush=True)
    machine.wait_idle(args.wait_idle)
    rounds: list[GuardRound] = []
    with scratch("bench-fleet-guard-") as root, ExitStack() as stack:
        store = stack.enter_context(etcd(root))
        failing = stack.enter_context(ClientPool(Workload(data=BAD_INPUT, check=False)))
        replicas = start_nodes(stack, fleet_specs(root, store, "bench-guard", n, (1, PREVIOUS)))
        start_clients(replicas, args.rate)
        cpu_stop = cpu_meter(replicas)
        for k in range(args.guard_rounds):
            rounds.append(guard_round(k, root, replicas, failing, args))
            if len(rounds) > 1:
                rounds[-2].until = rounds[-1].released
            time.sleep(0.3 + random.uniform(0, JITTER_S))
        cpu = cpu_stop()
        stop_clients(replicas)
        for r in rounds:
            # from the release on: every answer of PREVIOUS is after the rollback (the
            # origin's may end a hair before its event's time stamp: shown as it is)
            r.answers_ms = [(x.first(PREVIOUS, r.released, r.until) - r.decided) * 1e3
                            for x in replicas]
        failed, wrong, first = client_errors(replicas)
    return report_guard(rounds, n, cpu, failed, wrong, first)


def report_guard(rounds: list[GuardRound], n: int, cpu: dict[str, float], failed: int,
                 wrong: int,
                 first: str) -> dict[str, Any]:
    names = replica_names(n)
    stats.table("Each round: the guard's rollback event (its time stamp) -> first answer of"
                f" version {PREVIOUS} (ms; client side)",
                ["round", "bad version", "failed on", "rule (failures/requests)",
                 "failing calls sent", "event arrived here", *names, "last replica"],
                [[r.round, r.version, r.origin, r.rule, r.failing_calls,
                  fmt((r.arrived - r.decided) * 1e3, 1), *(fmt(a, 0) for a in r.answers_ms),
                  fmt(r.last_ms, 0)] for r in rounds])
    last = [r.last_ms for r in rounds]
    missed = sum(1 for x in last if x != x)
    seen = [x for x in last if x == x]
    met = "met" if seen and not missed and max(seen) < TARGET_MS else "MISSED"
    origin = [r.answers_ms[names.index(r.origin)] for r in rounds]
    stats.table(f"Guard decision -> first answer of version {PREVIOUS}, {n} replicas (ms)",
                ["figure", "p50", "max", "per round", "target", "met"],
                [["guard's rollback event -> last replica's first answer", fmt(median(seen), 0),
                  fmt(max(seen) if seen else float("nan"), 0), " ".join(fmt(x, 0) for x in last),
                  f"< {TARGET_MS:,.0f}", met],
                 ["baseline, no fleet needed: the origin's own first answer (local rollback)",
                  fmt(median(origin), 0), fmt(max(origin), 0),
                  " ".join(fmt(x, 0) for x in origin), "", ""]])
    print(f"good client calls failed {failed}, wrong {wrong}"
          f"{'; first: ' + first if first else ''}; {cpu_note(cpu)}")
    return {"replicas": n, "rounds": [asdict(r) | {"last_ms": r.last_ms} for r in rounds],
            "last_p50_ms": median(seen), "last_max_ms": max(seen) if seen else None,
            "origin_p50_ms": median(origin), "missed": missed, "met": met, "failed": failed,
            "wrong": wrong, **cpu}


# ---- cost on the request path ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostRun:
    variant: str
    round: int
    figures: Figures


VARIANTS = ("no fleet", "fleet")


def part_cost(args: argparse.Namespace) -> dict[str, Any]:
    pinned = (f"; servers pinned to CPU {','.join(map(str, args.server_cpus))}"
              if args.server_cpus else "") + (
        f", the client to CPU {','.join(map(str, args.client_cpus))}" if args.client_cpus
        else "")
    print(f"\n## cost: tiny batch 1, 16 calls in flight from one client process, against a"
          f" sidecar with --fleet-etcd and one without (both running, fresh ones every round);"
          f" {args.cost_rounds} rounds of 1 + {args.cost_duration:g} s each, the order"
          f" flipping{pinned}", flush=True)
    with scratch("bench-fleet-cost-") as root, ExitStack() as stack:
        store = stack.enter_context(etcd(root))
        pool = stack.enter_context(ClientPool(Workload()))
        for pid in pool.pids if args.client_cpus else ():
            machine.pin(pid, args.client_cpus)
        flags = {"no fleet": (), "fleet": ("--fleet-etcd", store.endpoint, "--fleet-name",
                                           "bench-cost", "--fleet-replica", "a")}
        repos = {v: repository(root / v.replace(" ", "-"), (1,)) for v in VARIANTS}

        def one(number: int) -> list[CostRun]:
            runs = []
            with ExitStack() as servers:  # fresh processes: no process's luck lasts
                started = {}
                for v in VARIANTS:
                    started[v] = Sidecar(repos[v], *flags[v],
                                         name=f"cost-{v.replace(' ', '-')}")
                    servers.callback(started[v].stop)
                    if args.server_cpus:
                        machine.pin(started[v].pid, args.server_cpus)
                for v in VARIANTS if number % 2 else VARIANTS[::-1]:
                    f = pool.measure(started[v], 1.0, args.cost_duration).figures
                    print(f"  round {number} {v:<8} {f.req_s:7.0f} req/s  p50 {f.p50_ms:.3f}"
                          f" ms  p99 {f.p99_ms:.3f} ms  CPU {f.server_us_per_call:.0f} us/call"
                          f"  others {f.others_cores:.2f} cores  errors {f.errors + f.wrong}",
                          flush=True)
                    runs.append(CostRun(v, number, f))
            return runs

        kept, dropped = stats.rounds(args.cost_rounds, args, one,
                                     lambda r: r.figures.others_cores)
    return report_cost(kept, dropped, args)


def report_cost(kept: list[CostRun], dropped: list[CostRun], args: argparse.Namespace
                ) -> dict[str, Any]:
    def med(variant: str, what: str) -> float:
        return median([getattr(r.figures, what) for r in kept if r.variant == variant])

    def per_round(what: str) -> list[float]:
        by = {(r.variant, r.round): getattr(r.figures, what) for r in kept}
        return [ratio(by["fleet", k], by["no fleet", k])
                for k in sorted({r.round for r in kept})]

    plain = [r for r in kept if r.variant == "no fleet"]
    calm = [r for r in plain if r.figures.others_cores <= args.max_others]
    disturbed = sum(r.figures.others_cores > args.max_others for r in kept)

    def spread(what: str) -> float:
        """(max - min) / median of the no-fleet server's rounds (the undisturbed ones if
        two or more were)."""
        values = [getattr(r.figures, what) for r in (calm if len(calm) > 1 else plain)]
        return (max(values) - min(values)) / median(values) if len(values) > 1 else 0.0

    figures = (("req_s", 0), ("p50_ms", 3), ("p99_ms", 3), ("server_us_per_call", 0))
    rows = []
    for v in VARIANTS:
        row: list[object] = [v]
        for what, digits in figures:
            row += [fmt(med(v, what), digits), fmt(ratio(med(v, what), med("no fleet", what)))]
        rows.append(row)
    stats.table("Request path: fleet mode against none (medians across rounds; ratio x to no"
                " fleet)", ["variant", "req/s", "x", "p50 ms", "x", "p99 ms", "x",
                            "server CPU us/call", "x"], rows)
    print("fleet/no fleet per round (median): " + "; ".join(
        f"{label} " + " ".join(fmt(x) for x in per_round(what))
        + f" ({fmt(median(per_round(what)))})"
        for label, what in (("req/s", "req_s"), ("p50", "p50_ms"), ("p99", "p99_ms"),
                            ("CPU/call", "server_us_per_call"))))
    errors = sum(r.figures.errors + r.figures.wrong for r in kept)
    if dropped:
        print(f"{len(dropped)} runs disturbed by other processes, measured again")
    rps = ratio(med("fleet", "req_s"), med("no fleet", "req_s"))
    p99 = ratio(med("fleet", "p99_ms"), med("no fleet", "p99_ms"))
    cpu = ratio(med("fleet", "server_us_per_call"), med("no fleet", "server_us_per_call"))
    rps_tol = max(MIN_RPS_TOL, spread("req_s"))
    p99_tol = max(MIN_P99_TOL, spread("p99_ms"))
    cpu_tol = max(MIN_RPS_TOL, spread("server_us_per_call"))
    print(f"noise: the no-fleet server's own spread across rounds: req/s"
          f" {spread('req_s') * 100:.1f} %, p99 {spread('p99_ms') * 100:.1f} %, CPU/call"
          f" {spread('server_us_per_call') * 100:.1f} %; client calls failed or wrong: {errors}")
    if disturbed:
        print(f"NOISE: other processes used more than {args.max_others:g} cores during"
              f" {disturbed} of {len(kept)} runs kept; compare with care (see --retries,"
              " --wait-idle)")
    return {"runs": [asdict(r) for r in kept], "dropped": [asdict(r) for r in dropped],
            "req_s_ratio": rps, "p99_ratio": p99, "req_s_tol": rps_tol, "p99_tol": p99_tol,
            "p50_ratio": ratio(med("fleet", "p50_ms"), med("no fleet", "p50_ms")),
            "per_round": {w: per_round(w) for w in ("req_s", "p50_ms", "p99_ms",
                                                    "server_us_per_call")},
            "req_s_met": "met" if rps >= 1 - rps_tol else "MISSED",
            "p99_met": "met" if p99 <= 1 + p99_tol else "MISSED", "cpu_ratio": cpu,
            "cpu_tol": cpu_tol, "cpu_met": "met" if cpu <= 1 + cpu_tol else "MISSED",
            "errors": errors, "disturbed_runs": disturbed}


# ---- the targets ------------------------------------------------------------------------


def report_targets(out: dict[str, Any], args: argparse.Namespace) -> None:
    rows = []
    note = "" if args.replicas == TARGET_REPLICAS else \
        f" (stated for {TARGET_REPLICAS}; measured with {args.replicas})"
    for key, label in (("command", "command -> last replica's first answer"),
                       ("guard", "guard decision -> last replica's first answer")):
        if key in out:
            r = out[key]
            rows.append([label + note, f"p50 {fmt(r['last_p50_ms'], 0)} ms, max"
                         f" {fmt(r['last_max_ms'] or float('nan'), 0)} ms"
                         + (f", {r['missed']} missed" if r["missed"] else ""),
                         f"< {TARGET_MS:,.0f} ms", r["met"]])
    if "cost" in out:
        c = out["cost"]
        rows.append(["request path: req/s, fleet / no fleet", fmt(c["req_s_ratio"]),
                     f">= {1 - c['req_s_tol']:.2f} (noise)", c["req_s_met"]])
        rows.append(["request path: p99, fleet / no fleet", fmt(c["p99_ratio"]),
                     f"<= {1 + c['p99_tol']:.2f} (noise)", c["p99_met"]])
        rows.append(["request path: server CPU per call, fleet / no fleet", fmt(c["cpu_ratio"]),
                     f"<= {1 + c['cpu_tol']:.2f} (noise)", c["cpu_met"]])
    stats.table("Targets", ["target", "measured", "bound", "met"], rows)


def strict(value: Any) -> Any:
    """NaN and infinities as null: strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: every sidecar and etcd is stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    info = machine.describe()
    print(machine.summary(info))
    parts = {"command": part_command, "guard": part_guard, "cost": part_cost}
    started = time.monotonic()
    out: dict[str, Any] = {}
    try:
        for name, part in parts.items():
            if not args.part or name in args.part:
                out[name] = part(args)
    except (RuntimeError, ServerLogError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    report_targets(out, args)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(strict({
            "machine": info, "args": {k: str(v) for k, v in vars(args).items()}, **out}),
            indent=2) + "\n")
    bad = sum(out[k]["failed"] + out[k]["wrong"] for k in ("command", "guard") if k in out)
    return 1 if bad or out.get("cost", {}).get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
