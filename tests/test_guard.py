"""The guard against a real server under real load: automatic rollback of a buggy
or slow version, canary promotion and abort, shadow rejection, quarantine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import EventStream, client, control_stub, infer_input
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

Inputs = Callable[[np.random.Generator], np.ndarray]


def random_rows(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((2, 4)).astype(np.float32)


class Load:
    """Client threads sending requests to one model until stopped; every outcome is
    kept (time order per thread) as the version that answered, or the error."""

    def __init__(self, address: str, model: str, threads: int = 4,
                 inputs: Inputs = random_rows) -> None:
        self.outcomes: list[str] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address, model, inputs, i))
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, address: str, model: str, inputs: Inputs, seed: int) -> None:
        c, rng = client(address), np.random.default_rng(seed)
        while not self._stop.is_set():
            try:
                result = c.infer(model, [infer_input("INPUT0", inputs(rng), "FP32")])
                outcome = result.get_response().model_version
            except InferenceServerException as exc:
                outcome = f"error: {exc.message()}"
            with self._lock:
                self.outcomes.append(outcome)
                self._lock.notify_all()
        c.close()

    def mark(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_count(self, n: int, timeout: float = 60.0) -> None:
        """Wait until n outcomes have arrived."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.outcomes) >= n, timeout):
                raise AssertionError(f"only {len(self.outcomes)} of {n} answers in {timeout}s")

    def stop(self) -> list[str]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        return self.outcomes


def _repo(root: Path) -> Path:
    for v in (1, 2):
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


@pytest.fixture
def guarded(start_server: Any, tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess,
                                                                                  EventStream]]]:
    streams: list[EventStream] = []

    def start(extra: dict[int, Any], *args: str, state: Path | None = None
              ) -> tuple[ServerProcess, EventStream]:
        # Version 2 serves; the extra versions appear after the start, and with
        # --no-watch only the test's commands touch them.
        repo = _repo(tmp_path / "repo")
        srv = start_server(repo, "--no-watch", *args, state_dir=state)
        for v, model in extra.items():
            make_models.write_model(model, repo, "tiny", v)
        streams.append(EventStream(srv.control_address))
        return srv, streams[-1]

    yield start
    for stream in streams:
        stream.close()


def test_buggy_version_is_rolled_back_and_quarantined(guarded: Any) -> None:
    """A version failing most requests is rolled back by the guard within a bounded
    number of requests; then every request succeeds on the previous version, and
    the bad digest is quarantined (also across a restart)."""
    srv, events = guarded({3: make_models.buggy_model(2)})
    stub = control_stub(srv.control_address)
    load = Load(srv.address, "tiny")
    try:
        stub.Activate(cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
        rollback = events.wait_for(model="tiny", action="rollback", actor="guard")
        after = load.mark()
        quarantined = events.wait_for(model="tiny", action="quarantine", actor="guard")
        load.wait_count(after + 200)
    finally:
        outcomes = load.stop()
    assert rollback.to_version.number == 2 and rollback.from_version.number == 3
    assert rollback.details["rule"] in {"error-ratio", "consecutive-failures"}
    assert int(rollback.details["failures"]) >= 1
    failed = [o for o in outcomes if o.startswith("error")]
    assert 0 < len(failed) < 200, len(failed)  # bounded: caught in well under 200
    assert all(o == "2" for o in outcomes[after + 8:]), "requests failed after the rollback"
    assert quarantined.to_version.digest == rollback.from_version.digest
    versions = stub.ListVersions(cpb.ListVersionsRequest(model="tiny"), timeout=10).versions
    assert {v.number: v.quarantined for v in versions}[3] is True
    refused = pytest.raises(Exception, match="quarantined")
    with refused:
        stub.Canary(cpb.CanaryRequest(model="tiny", version="3", weight_percent=10), timeout=30)


def test_client_errors_never_count(guarded: Any) -> None:
    """Half the requests are the client's fault (wrong input name): the new version
    is not rolled back, and its guard window holds only the good half, all fine."""
    srv, events = guarded({3: make_models.tiny_model(3)})
    stub = control_stub(srv.control_address)
    stub.Activate(cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
    c = client(srv.address)
    x = np.ones((1, 4), np.float32)
    for i in range(300):
        name = "INPUT0" if i % 2 else "WRONG"
        try:
            c.infer("tiny", [infer_input(name, x, "FP32")])
        except InferenceServerException as exc:
            assert "WRONG" in exc.message()
    state = stub.GetGuard(cpb.GetGuardRequest(model="tiny"), timeout=10).state
    assert state["probation_version"] == "3"
    assert (state["window_requests"], state["window_failures"]) == ("150", "0")
    assert not [e for e in events.of("tiny") if e.actor == "guard"]


def test_slow_version_is_rolled_back_on_latency(guarded: Any) -> None:
    """A version much slower than the previous one (deterministic compute) is rolled
    back on its p99 latency."""
    srv, events = guarded({3: make_models.slow_model(3)})
    stub = control_stub(srv.control_address)
    rows = lambda rng: rng.standard_normal((512, 4)).astype(np.float32)  # noqa: E731
    load = Load(srv.address, "tiny", threads=2, inputs=rows)
    try:
        load.wait_count(120)
        stub.Activate(cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
        rollback = events.wait_for(model="tiny", action="rollback", actor="guard", timeout=60)
    finally:
        outcomes = load.stop()
    assert rollback.details["rule"] == "latency" and "p99" in rollback.reason
    assert not [o for o in outcomes if o.startswith("error")]


def test_canary_is_promoted_when_healthy(guarded: Any) -> None:
    """A healthy canary takes its share of requests, then is promoted by the guard."""
    srv, events = guarded({3: make_models.tiny_model(3)})
    stub = control_stub(srv.control_address)
    stub.SetGuard(cpb.SetGuardRequest(model="tiny", settings={
        "canary_promote_requests": "100", "canary_promote_s": "0"}), timeout=10)
    load = Load(srv.address, "tiny")
    try:
        stub.Canary(cpb.CanaryRequest(model="tiny", version="3", weight_percent=30),
                    timeout=30)
        promoted = events.wait_for(model="tiny", action="activate", actor="guard")
    finally:
        outcomes = load.stop()
    assert promoted.to_version.number == 3 and "canary healthy" in promoted.reason
    assert {"2", "3"} <= set(outcomes) and not [o for o in outcomes if o.startswith("error")]


def test_a_canary_started_with_the_guard_off_is_judged_once_it_is_on(guarded: Any) -> None:
    """The guard turned on while a canary runs judges that canary (and promotes it
    when healthy) without waiting for another change of what serves."""
    srv, events = guarded({3: make_models.tiny_model(3)})
    stub = control_stub(srv.control_address)
    stub.SetGuard(cpb.SetGuardRequest(model="tiny", settings={
        "enabled": "false", "canary_promote_requests": "100", "canary_promote_s": "0"}),
        timeout=10)
    load = Load(srv.address, "tiny")
    try:
        stub.Canary(cpb.CanaryRequest(model="tiny", version="3", weight_percent=30),
                    timeout=30)
        load.wait_count(load.mark() + 50)
        stub.SetGuard(cpb.SetGuardRequest(model="tiny", settings={"enabled": "true"}),
                      timeout=10)
        promoted = events.wait_for(model="tiny", action="activate", actor="guard")
    finally:
        outcomes = load.stop()
    assert promoted.to_version.number == 3 and "canary healthy" in promoted.reason
    assert not [o for o in outcomes if o.startswith("error")]


def test_bad_canary_is_aborted_and_quarantined(guarded: Any) -> None:
    """A failing canary is aborted; the active version never stopped serving."""
    srv, events = guarded({3: make_models.buggy_model(2)})
    stub = control_stub(srv.control_address)
    load = Load(srv.address, "tiny")
    try:
        stub.Canary(cpb.CanaryRequest(model="tiny", version="3", weight_percent=50),
                    timeout=30)
        aborted = events.wait_for(model="tiny", action="canary-abort", actor="guard")
        events.wait_for(model="tiny", action="quarantine", actor="guard")
        after = load.mark()
        load.wait_count(after + 100)
    finally:
        outcomes = load.stop()
    assert aborted.from_version.number == 3
    # the canary did take requests: answered by 3, or failed by it (the buggy model
    # fails 3 of 4, so its first few may all fail before the abort)
    assert any(o == "3" or "version 3" in o for o in outcomes)
    # after the abort (allowing for the requests in flight on each thread): only 2
    assert all(o == "2" for o in outcomes[after + 8:])


def test_shadow_rejects_a_drifted_version_without_touching_the_primary(guarded: Any) -> None:
    """A drifted shadow is rejected on disagreement; every primary answer comes from
    the active version, succeeds, and matches its weights."""
    srv, events = guarded({3: make_models.drifted_model(2)})
    stub = control_stub(srv.control_address)
    load = Load(srv.address, "tiny", threads=2,
                inputs=lambda rng: rng.standard_normal((8, 4)).astype(np.float32))
    try:
        stub.Shadow(cpb.ShadowRequest(model="tiny", version="3"), timeout=30)
        rejected = events.wait_for(model="tiny", action="shadow-abort", actor="guard")
    finally:
        outcomes = load.stop()
    assert int(rejected.details["disagreed"]) > 0 and "disagrees" in rejected.reason
    assert set(outcomes) == {"2"}


def test_primary_never_waits_for_a_slow_shadow(guarded: Any) -> None:
    """A shadow far slower than the primary: copies are dropped (counted) instead of
    delaying the primary, whose requests all succeed on the active version."""
    srv, _ = guarded({3: make_models.slow_model(3)})
    stub = control_stub(srv.control_address)
    rows = lambda rng: rng.standard_normal((256, 4)).astype(np.float32)  # noqa: E731
    stub.Shadow(cpb.ShadowRequest(model="tiny", version="3", force=True), timeout=30)
    load = Load(srv.address, "tiny", threads=4, inputs=rows)
    try:
        load.wait_count(400)
        ended = stub.Abort(cpb.CandidateCommand(model="tiny"), timeout=30)
    finally:
        outcomes = load.stop()
    assert int(ended.figures["dropped"]) > 0
    assert int(ended.figures["compared"]) < len(outcomes)
    assert set(outcomes) == {"2"}


def test_quarantine_survives_a_restart(guarded: Any, tmp_path: Path) -> None:
    """A digest quarantined by command stays quarantined after a restart, and can
    be cleared with unquarantine."""
    state = tmp_path / "state"
    srv, _ = guarded({3: make_models.tiny_model(3)}, state=state)
    stub = control_stub(srv.control_address)
    digest = stub.Quarantine(cpb.QuarantineRequest(model="tiny", version="3"),
                             timeout=10).digest
    assert srv.stop() == 0
    again, _ = guarded({}, state=state)
    stub = control_stub(again.control_address)
    versions = stub.ListVersions(cpb.ListVersionsRequest(model="tiny"), timeout=10).versions
    assert {v.number: v.quarantined for v in versions}[3] is True
    cleared = stub.Unquarantine(cpb.QuarantineRequest(version=digest[:16]), timeout=10)
    assert digest not in cleared.quarantine
