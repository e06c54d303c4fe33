"""Fleets, for real: a real etcd (Debian's etcd-server on loopback, started and
killed by the fixture) and three or more real sidecars of one fleet, each with its
own state and its own copy of the model repository, as pods have. Every wait is on
the replicas' event streams or on a condition with a deadline; no timing asserts.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import (
    EventStream,
    client,
    control_stub,
    infer_input,
    start_hammers,
    stop_hammers,
    tiny_expected,
    wait_until,
)
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

FLEET = "shop"


def repository(path: Path, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    for version in versions:
        make_models.write_model(make_models.tiny_model(version), path, "tiny", version)
    return path


class Replica:
    def __init__(self, server: ServerProcess, name: str) -> None:
        self.server, self.name = server, name
        self.events = EventStream(server.control_address)

    def ctl(self) -> Any:
        return control_stub(self.server.control_address)

    def serving(self, model: str = "tiny") -> int:
        x = np.ones((1, 4), np.float32)
        result = client(self.server.address).infer(model, [infer_input("INPUT0", x, "FP32")])
        version = int(result.get_response().model_version)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, version),
                                   rtol=1e-5, atol=1e-6)
        return version

    def active(self, model: str = "tiny") -> int:
        models = self.ctl().ListModels(cpb.ListModelsRequest(), timeout=10).models
        return next((m.active.number for m in models if m.name == model), 0)

    def fleet(self) -> Any:
        return self.ctl().Fleet(cpb.FleetRequest(), timeout=10)


class Fleet:
    def __init__(self, root: Path, etcd: Any) -> None:
        self.root, self.etcd = root, etcd
        self.replicas: list[Replica] = []

    def start(self, name: str, *args: str, versions: tuple[int, ...] = (1, 2, 3)) -> Replica:
        repo = repository(self.root / name / "models", versions)
        server = ServerProcess(repo, "--fleet-etcd", self.etcd.endpoint, "--fleet-name", FLEET,
                               "--fleet-replica", name, "--fleet-lease-s", "2",
                               "--watch-settle-ms", "200", *args,
                               state_dir=self.root / name / "state")
        replica = Replica(server, name)
        self.replicas.append(replica)
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            replica.events.close()
            assert replica.server.stop() == 0


@pytest.fixture
def fleet(tmp_path: Path, etcd_server: Any) -> Iterator[Fleet]:
    group = Fleet(tmp_path, etcd_server)
    try:
        yield group
    finally:
        group.stop()


def test_a_command_to_one_replica_reaches_all(fleet: Fleet) -> None:
    """`activate 1` given to one replica: every replica activates version 1 (actor
    `fleet`, naming the origin), under load with no failed request; `ctl fleet` on
    any replica shows the shared state and every member serving version 1."""
    a, b, c = (fleet.start(name) for name in ("a", "b", "c"))
    for r in (a, b, c):
        assert r.active() == 3
    stop, _, results, procs = start_hammers(b.server.address, 1)
    try:
        a.ctl().Activate(cpb.ActivateRequest(model="tiny", version="1", actor="deploy",
                                             reason="bad release"), timeout=30)
        for r in (b, c):
            event = r.events.wait_for(model="tiny", action="activate", to=1)
            assert event.actor == "fleet" and "activate by deploy on a" in event.reason
        assert [r.serving() for r in (a, b, c)] == [1, 1, 1]
    finally:
        totals = stop_hammers(stop, results, procs)
    assert totals.get("failed", 0) == 0 and totals.get("wrong", 0) == 0, totals
    wait_until(lambda: len(c.fleet().members) == 3
               and all(m.models[0].serving.number == 1 for m in c.fleet().members),
               what="every member reporting version 1")
    view = c.fleet()
    assert view.fleet == FLEET and view.replica == "c" and view.connected
    shared = view.models[0]
    assert (shared.model, shared.active.number, shared.previous.number) == ("tiny", 1, 3)
    assert "activate by deploy on a" in shared.changed_by


def test_concurrent_commands_one_wins_the_other_gets_the_current_state(fleet: Fleet) -> None:
    """Two tools change the same model at once through two replicas, each expecting
    version 3: exactly one wins; the other gets FAILED_PRECONDITION naming what serves
    now (the fleet's compare-and-swap, or the replica's own view if it converged
    first), and every replica ends on the winner's version."""
    a, b, c = (fleet.start(name) for name in ("a", "b", "c"))
    outcomes: dict[str, Any] = {}

    def command(replica: Replica, version: str) -> None:
        try:
            replica.ctl().Activate(cpb.ActivateRequest(
                model="tiny", version=version, actor="tool", expected_active="3"), timeout=30)
            outcomes[version] = "ok"
        except grpc.RpcError as err:
            outcomes[version] = err

    threads = [threading.Thread(target=command, args=(a, "1")),
               threading.Thread(target=command, args=(b, "2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [v for v, o in outcomes.items() if o == "ok"]
    losers = [o for o in outcomes.values() if o != "ok"]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert losers[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    details = losers[0].details()
    assert f"version {winners[0]}" in details or "changed in the fleet" in details, details
    won = int(winners[0])
    for r in (a, b, c):
        wait_until(lambda r=r: r.active() == won, what=f"{r.name} on version {won}")


def test_pins_guard_settings_and_unquarantine_are_shared(fleet: Fleet) -> None:
    """A pin, guard settings and a quarantine (and its lifting) given to one replica
    reach the others."""
    a, b = fleet.start("a"), fleet.start("b")
    a.ctl().Pin(cpb.PinRequest(model="tiny", actor="ops"), timeout=30)
    b.events.wait_for(model="tiny", action="pin", actor="fleet")
    a.ctl().SetGuard(cpb.SetGuardRequest(model="tiny", settings={"max_error_ratio": "0.2"},
                                         actor="ops"), timeout=30)
    b.events.wait_for(model="tiny", action="guard-settings", actor="fleet")
    assert b.ctl().GetGuard(cpb.GetGuardRequest(model="tiny"), timeout=10).overrides == {
        "max_error_ratio": "0.2"}
    digest = a.ctl().Quarantine(cpb.QuarantineRequest(model="tiny", version="1", actor="ops",
                                                      reason="leaks"), timeout=30).digest
    mark = b.events.wait_for(model="tiny", action="quarantine", actor="fleet")
    assert mark.to_version.digest == digest and mark.reason == "leaks"
    b.ctl().Unquarantine(cpb.QuarantineRequest(version=digest, actor="ops"), timeout=30)
    a.events.wait_for(action="unquarantine", actor="fleet")
    assert not b.fleet().quarantine and not a.fleet().quarantine


def test_a_replica_that_cannot_load_the_fleet_version_reports_it(fleet: Fleet) -> None:
    """Replica c has no version 1 on disk: when the fleet activates 1, a and b follow,
    c keeps serving 3 and says why (ctl fleet, an event); nobody is blocked."""
    a, b = fleet.start("a"), fleet.start("b")
    c = fleet.start("c", versions=(2, 3))
    a.ctl().Activate(cpb.ActivateRequest(model="tiny", version="1", actor="ops"), timeout=30)
    b.events.wait_for(model="tiny", action="activate", to=1, actor="fleet")
    diverged = c.events.wait_for(model="tiny", action="fleet-diverged")
    assert "cannot serve the fleet's version 1" in diverged.reason
    assert c.serving() == 3 and a.serving() == 1
    assert "cannot serve the fleet's version 1" in c.fleet().errors["tiny"]
    wait_until(lambda: any(m.replica == "c" and m.models[0].error for m in a.fleet().members),
               what="c's member record saying why")
    # a pin given to the diverged replica pins the fleet's version, not c's own
    c.ctl().Pin(cpb.PinRequest(model="tiny", actor="ops"), timeout=30)
    a.events.wait_for(model="tiny", action="pin", actor="fleet")
    assert a.fleet().models[0].active.number == 1 and a.active() == 1
    # version 1 arrives late in c's repository (a slow sync): c catches up by itself
    staging = fleet.root / "c" / "staging"
    make_models.write_model(make_models.tiny_model(1), staging, "tiny", 1)
    (staging / "tiny" / "1").rename(fleet.root / "c" / "models" / "tiny" / "1")
    c.events.wait_for(model="tiny", action="activate", to=1, actor="fleet",
                      after=diverged.seq)
    wait_until(lambda: not c.fleet().errors, what="c's error cleared")
    assert c.serving() == 1


def test_a_new_replica_adopts_the_fleet_state(fleet: Fleet) -> None:
    """A replica that starts after the fleet rolled back serves the fleet's version,
    not the newest on its disk, and its watcher does not activate the newest."""
    a = fleet.start("a")
    a.ctl().Rollback(cpb.RollbackRequest(model="tiny", actor="ops"), timeout=30)
    assert a.active() == 2
    d = fleet.start("d")
    assert d.active() == 2 and d.serving() == 2
    restore = d.events.wait_for(model="tiny", action="restore", to=2)
    assert restore.actor == "startup"
    assert not [e for e in d.events.of("tiny") if e.action == "activate"]


def release(fleet: Fleet, replicas: list[Replica]) -> None:
    """Version 3, with a bug only inputs with x[:, 0] > 0 trigger, appears in every
    replica's repository (as a sync would bring it): every replica serves it, on
    probation, whichever replica's watcher won the race to publish it."""
    for r in replicas:
        staging = fleet.root / r.name / "staging"
        make_models.write_model(make_models.buggy_model(3), staging, "tiny", 3)
        (staging / "tiny" / "3").rename(fleet.root / r.name / "models" / "tiny" / "3")
    for r in replicas:
        wait_until(lambda r=r: r.active() == 3, what=f"{r.name} serving version 3")


def _send_failing(replica: Replica, stop: threading.Event) -> None:
    """Requests that buggy_model fails (x[:, 0] > 0), until `stop`."""
    c = client(replica.server.address)
    x = np.ones((1, 4), np.float32)
    while not stop.is_set():
        try:
            c.infer("tiny", [infer_input("INPUT0", x, "FP32")])
        except InferenceServerException:
            pass
    c.close()


def test_a_guard_rollback_in_one_replica_quarantines_everywhere(fleet: Fleet) -> None:
    """Version 3 has a bug that only some inputs trigger, and only replica a gets
    them: a's guard rolls back (locally first) and quarantines the digest; b and c,
    which never saw a failing request, roll back too and quarantine it."""
    replicas = [fleet.start(name, versions=(1, 2)) for name in ("a", "b", "c")]
    a, b, c = replicas
    release(fleet, replicas)
    stop = threading.Event()
    sender = threading.Thread(target=_send_failing, args=(a, stop))
    sender.start()
    try:
        rollback = a.events.wait_for(model="tiny", action="rollback", actor="guard")
    finally:
        stop.set()
        sender.join(timeout=60)
    bad = rollback.from_version.digest
    for r in (b, c):
        r.events.wait_for(model="tiny", action="activate", to=2, actor="fleet")
        mark = r.events.wait_for(model="tiny", action="quarantine", actor="fleet")
        assert mark.to_version.digest == bad
        assert r.serving() == 2
    view = c.fleet()
    assert [q.digest for q in view.quarantine] == [bad]
    assert view.models[0].active.number == 2 and "rollback by guard on a" in \
        view.models[0].changed_by


def test_etcd_down_keeps_serving_fails_commands_and_reconverges(fleet: Fleet) -> None:
    """etcd killed: every replica keeps serving, a command fails at once with
    UNAVAILABLE and changes nothing; etcd back: a command reaches every replica again."""
    a, b, c = (fleet.start(name) for name in ("a", "b", "c"))
    fleet.etcd.kill()
    for r in (a, b, c):
        assert r.serving() == 3
    with pytest.raises(grpc.RpcError) as err:
        a.ctl().Activate(cpb.ActivateRequest(model="tiny", version="1", actor="ops"),
                         timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "fleet's store (etcd) cannot be reached" in err.value.details()
    assert "nothing changed" in err.value.details()
    assert [r.active() for r in (a, b, c)] == [3, 3, 3]
    fleet.etcd.restart()
    wait_until(lambda: a.fleet().connected, timeout=60, what="the watch back up")
    # a's view of the fleet is current again: the command goes through, fleet-wide
    a.ctl().Activate(cpb.ActivateRequest(model="tiny", version="1", actor="ops"),
                     timeout=30)
    for r in (b, c):
        r.events.wait_for(model="tiny", action="activate", to=1, actor="fleet")
    assert [r.serving() for r in (a, b, c)] == [1, 1, 1]


def test_a_guard_decision_while_etcd_is_down_is_published_when_it_is_back(
        fleet: Fleet) -> None:
    """The guard does not wait for the network: with etcd down, replica a rolls back
    alone; once etcd is back, its decision is published and b follows."""
    replicas = [fleet.start(name, versions=(1, 2)) for name in ("a", "b")]
    a, b = replicas
    release(fleet, replicas)
    fleet.etcd.kill()
    stop = threading.Event()
    sender = threading.Thread(target=_send_failing, args=(a, stop))
    sender.start()
    try:
        a.events.wait_for(model="tiny", action="rollback", actor="guard")
    finally:
        stop.set()
        sender.join(timeout=60)
    assert a.serving() == 2 and b.active() == 3
    wait_until(lambda: a.fleet().pending > 0, what="the decision queued")
    fleet.etcd.restart()
    b.events.wait_for(model="tiny", action="activate", to=2, actor="fleet", timeout=60)
    b.events.wait_for(model="tiny", action="quarantine", actor="fleet")
    wait_until(lambda: a.fleet().pending == 0, what="the queue published")


@pytest.mark.parametrize(("args", "says"), [
    (("--fleet-etcd", "127.0.0.1:2379"), "fleet-etcd needs fleet-name"),
    (("--fleet-name", "shop"), "fleet-name needs fleet-etcd"),
    (("--fleet-etcd", "127.0.0.1", "--fleet-name", "shop"), "is not HOST:PORT"),
    (("--fleet-etcd", "127.0.0.1:2379", "--fleet-name", "a/b"), "fleet name 'a/b'"),
    (("--fleet-etcd", "127.0.0.1:2379", "--fleet-name", "shop", "--fleet-etcd-password-file",
      "/no/such/file", "--fleet-etcd-user", "u"), "fleet-etcd-password-file"),
    (("--fleet-etcd", "127.0.0.1:2379", "--fleet-name", "shop", "--fleet-lease-s", "1"),
     "fleet-lease-s must be at least 2"),
], ids=["no name", "no etcd", "no port", "bad name", "no password file", "short lease"])
def test_fleet_settings_that_cannot_work_are_refused(tmp_path: Path, args: tuple[str, ...],
                                                     says: str) -> None:
    """Fleet settings that cannot work: exit 2 with one line, before anything starts."""
    repository(tmp_path / "models", (1,))
    result = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--model-repository",
                             str(tmp_path / "models"), *args], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_new_replica_does_not_apply_a_declaration_the_fleet_moved_away_from(
        fleet: Fleet) -> None:
    """sidecar.json declares `serve: 2` and the fleet applied it; an operator then
    activated 1. A new replica with the same repository adopts 1 and does not apply
    the declaration again, fleet-wide."""
    a = fleet.start("a")
    (fleet.root / "a" / "models" / "tiny" / "sidecar.json").write_text('{"serve": 2}')
    a.events.wait_for(model="tiny", action="activate", to=2, actor="watcher")
    a.ctl().Activate(cpb.ActivateRequest(model="tiny", version="1", actor="ops"), timeout=30)
    repo = repository(fleet.root / "d" / "models")
    (repo / "tiny" / "sidecar.json").write_text('{"serve": 2}')
    d = fleet.start("d")
    d.events.wait_for(model="tiny", action="restore", to=1)
    wait_until(lambda: d.ctl().Status(cpb.StatusRequest(), timeout=10).models[0]
               .declaration.conflict != "", what="d's conflict shown")
    assert [a.active(), d.active()] == [1, 1]
    assert not [e for e in d.events.of("tiny") if e.action == "activate"]
