"""Issue 14, quality: feedback joined to answers by id, the quality rule, guard modes.

Real servers (`sidecar serve` subprocesses) and real models made here: a 4-class
classifier INPUT0 FP32 [-1, 4] -> SCORES FP32 [-1, 4] (SCORES = INPUT0 + bias,
so the predicted class is argmax(INPUT0 + bias) and the truth is argmax(INPUT0)).
ModelInfer goes through tritonclient; feedback through the generated stub, in a
process of its own (tests/feedback_client.py: the sidecar's `inference` proto
package cannot share a process with tritonclient's). Approve and dismiss are
tested in process at the guard's level (the control RPCs for them come later).
No sleeps: the tests wait on events and on figures, with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import onnx
import pytest
from helpers import EventStream, client, control_stub, infer_input, wait_until
from onnx import TensorProto, helper, numpy_helper
from test_control import ctl

from sidecar.errors import FailedPreconditionError
from sidecar.guard.guard import Guard
from sidecar.guard.rules import GuardSettings
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.dataplane import DataPlane
from sidecar.handlers.types import InferInput, InferRequest
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.quality.engine import QualityEngine
from sidecar.rpc.proto import control_pb2
from sidecar.state.events import EventLog

GOOD = [0.0, 0.0, 0.0, 0.0]
WRONG_ON_3 = [0.0, 0.0, 0.0, -100.0]  # never predicts class 3: about 25 % of accuracy lost
QUALITY = {"output": "SCORES"}  # every other key at its default (min_samples 200 ...)


def classifier(bias: list[float], name: str = "cls") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "B"], ["SCORES"])], name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.asarray(bias, np.float32), "B")])
    return helper.make_model(graph, ir_version=make_models.IR_VERSION,
                             opset_imports=[helper.make_opsetid("", make_models.OPSET)])


def write_classifier(repo: Path, model: str, versions: dict[int, list[float]],
                     settings: dict[str, Any]) -> None:
    for number, bias in versions.items():
        make_models.write_model(classifier(bias, f"{model}_v{number}"), repo, model, number)
    (repo / model / "sidecar.json").write_text(json.dumps(settings))


def inputs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows of INPUT0 and their true classes (argmax: version GOOD is always right)."""
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, x.argmax(axis=1)


def label(name: str, classes: list[int], **kw: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "INT64", "shape": [len(classes)], "values": classes,
            **kw}


def item(model: str, request_id: str, *truth: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"model": model, "id": request_id, "truth": list(truth), **kw}


class Feedback:
    """The generated feedback stub, in its own process (see the module docstring)."""

    def __init__(self, address: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("feedback_client.py")), address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _call(self, op: str, items: list[dict[str, Any]]) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"op": op, "items": items}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        assert line, "the feedback client ended"
        return json.loads(line)

    def send(self, *items: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self._call("send", list(items)))

    def stream(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self._call("stream", items))

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            assert self._proc.wait(timeout=30) == 0
        finally:
            self._proc.stdout.close()


@pytest.fixture
def feedback_for() -> Iterator[Any]:
    made: list[Feedback] = []

    def make(address: str) -> Feedback:
        made.append(Feedback(address))
        return made[-1]

    yield make
    for f in made:
        f.close()


def guard_state(control_address: str, model: str) -> dict[str, str]:
    reply = control_stub(control_address).GetGuard(control_pb2.GetGuardRequest(model=model))
    return dict(reply.state)


def active_version(control_address: str, model: str) -> int:
    models = control_stub(control_address).ListModels(control_pb2.ListModelsRequest()).models
    return next(int(m.active.number) for m in models if m.name == model)


def wait_copies(control_address: str, model: str) -> None:
    """Wait until the previous version answered every mirrored copy queued so far (its
    answers join their ids off the request path: truth sent before would be unpaired)."""
    wait_until(lambda: guard_state(control_address, model)["feedback_copies_pending"] == "0",
               what=f"the mirrored copies of {model}")


def start_probation(control_address: str, model: str) -> None:
    """Make version 2 active by a person's command (a fresh start gives no probation):
    roll back to 1, then back to 2, which is then on probation with 1 warm."""
    stub = control_stub(control_address)
    for _ in range(2):
        stub.Rollback(control_pb2.RollbackRequest(model=model, actor="test"))
    assert active_version(control_address, model) == 2


def infer_ids(c: Any, model: str, x: np.ndarray, prefix: str, version: str = "") -> list[str]:
    """One batch-1 ModelInfer per row with ids prefix0, prefix1, ...; the versions
    that answered."""
    return [c.infer(model, [infer_input("INPUT0", x[i:i + 1], "FP32")],
                    request_id=f"{prefix}{i}", model_version=version)
            .get_response().model_version for i in range(len(x))]


# ---- the join ------------------------------------------------------------------------

def test_feedback_joins_truth_by_id_for_each_version(start_server: Any, tmp_path: Path,
                                                      feedback_for: Any) -> None:
    """Truth meets what the active version answered and what the previous version
    answered for a mirrored copy; unknown, repeated and expired ids are unmatched;
    malformed truth is INVALID_ARGUMENT with the reason (Send) or counted with it
    (SendStream, which goes on); the service is on both addresses and in reflection."""
    repo = tmp_path / "repo"
    write_classifier(repo, "cls", {1: GOOD, 2: WRONG_ON_3}, {"quality": QUALITY})
    write_classifier(repo, "bad", {1: GOOD}, {"quality": {"metric": "mae"}})
    make_models.write_model(make_models.tiny_model(1), repo, "tiny", 1)
    srv = start_server(repo, "--no-watch", "--feedback-max-ids", "50")
    # A "quality" object that cannot work: logged, and quality is off for that model.
    (logged,) = [r for r in srv.log if r["event"] == "bad quality settings; quality is off"
                 " for the model"]  # logged before "serving", once
    assert logged["model"] == "bad" and logged["level"] == "error"
    assert "quality.metric 'mae' is not valid for task 'classification'" in logged["reason"]
    assert guard_state(srv.control_address, "bad")["quality"].startswith("off (quality.metric")
    fb = feedback_for(srv.address)
    c = client(srv.address)
    x = np.array([[0, 0, 0, 3], [3, 0, 0, 0], [0, 2, 0, 0]], np.float32)  # classes 3, 0, 1
    assert infer_ids(c, "cls", x, "a") == ["2", "2", "2"]
    wait_copies(srv.control_address, "cls")

    a0, a1 = fb.send(item("cls", "a0", label("SCORES", [3]), reward=0.5),
                     item("cls", "a1", label("SCORES", [0])))
    assert a0 == {"outcome": "MATCHED", "versions": [2, 1], "paired": True, "reason": ""}
    assert a1["outcome"] == "MATCHED" and a1["versions"] == [2, 1]
    again, unknown = fb.send(item("cls", "a0", label("SCORES", [3])),
                             item("cls", "nope", label("SCORES", [1])))
    for r in (again, unknown):
        assert r["outcome"] == "UNMATCHED" and "no answer is remembered" in r["reason"]

    # Malformed truth: refused with the reason, and the id stays for a good truth.
    x2 = np.array([[0, 0, 5, 0]], np.float32)
    infer_ids(c, "cls", x2, "b")
    wait_copies(srv.control_address, "cls")
    refused = fb.send(
        item("cls", "b0", label("NOPE", [2])),
        item("cls", "b0", label("SCORES", [2, 2])),
        item("cls", "b0", label("SCORES", [7])),
        item("cls", "b0", {"name": "SCORES", "datatype": "BYTES", "shape": [1],
                           "values": ["2"]}),
        item("cls", "b0", {"name": "SCORES", "datatype": "INT64", "shape": [1],
                           "raw_hex": "0200"}),
        item("cls", "b0"),
        item("ghost", "b0", label("SCORES", [2])),
        item("tiny", "b0", label("OUTPUT0", [2])),
        item("bad", "b0", label("SCORES", [2])))
    assert [r["code"] for r in refused] == ["INVALID_ARGUMENT"] * 6 + [
        "NOT_FOUND"] + ["FAILED_PRECONDITION"] * 2
    reasons = [r["details"] for r in refused]
    assert "names no output of model 'cls' (its outputs: SCORES)" in reasons[0]
    assert "truth has 2 rows, the answer has 1" in reasons[1]
    assert "truth label 7 is out of range for 4 classes" in reasons[2]
    assert "must be numeric, not BYTES" in reasons[3]
    assert "raw contents hold 2 bytes, but INT64 of shape [1] needs 8" in reasons[4]
    assert "no truth for output 'SCORES'" in reasons[5]
    assert "unknown model 'ghost'" in reasons[6]
    assert "has no quality settings" in reasons[7]
    one_hot = {"name": "SCORES", "datatype": "FP32", "shape": [1, 4], "values": [[0, 0, 1, 0]],
               "raw": True}
    (b0,) = fb.send(item("cls", "b0", one_hot))
    assert b0["outcome"] == "MATCHED" and b0["versions"] == [2, 1]

    # A request that names its version is remembered for that version only.
    assert infer_ids(c, "cls", np.array([[0, 0, 0, 4]], np.float32), "v", version="1") == ["1"]
    (v0,) = fb.send(item("cls", "v0", label("SCORES", [3])))
    assert v0 == {"outcome": "MATCHED", "versions": [1], "paired": False, "reason": ""}

    # A stream: every item counted, bad ones with their reasons, garbage included.
    infer_ids(c, "cls", x, "s")
    wait_copies(srv.control_address, "cls")
    summary = fb.stream([item("cls", "s0", label("SCORES", [3])),
                         item("cls", "s1", label("SCORES", [0])),
                         item("cls", "gone", label("SCORES", [0])),
                         item("cls", "s2", label("NOPE", [1])),
                         {"garbage": "ffffffff"},
                         item("ghost", "s2", label("SCORES", [1])),
                         item("cls", "s2", label("SCORES", [1]))])
    assert {k: summary[k] for k in ("received", "matched", "unmatched", "invalid", "paired")} \
        == {"received": 7, "matched": 3, "unmatched": 1, "invalid": 3, "paired": 3}
    errors = {e["index"]: e["reason"] for e in summary["errors"]}
    assert set(errors) == {3, 4, 5}
    assert "names no output" in errors[3] and "not a valid SendStream message" in errors[4]
    assert "unknown model 'ghost'" in errors[5]

    # The figures: per model (ctl guard), per version (accuracy of what met truth).
    state = guard_state(srv.control_address, "cls")
    assert state["feedback_matched"] == "7" and state["feedback_unmatched"] == "3"
    assert state["feedback_invalid"] == "7" and state["feedback_paired"] == "6"
    assert state["quality"].startswith("accuracy of SCORES (classification)")
    assert state["quality_pair"] == "2 vs 1" and state["feedback_copies_dropped"] == "0"

    # Ids beyond --feedback-max-ids are forgotten, the oldest first.
    rng = np.random.default_rng(5)
    many, classes = inputs(rng, 51)
    infer_ids(c, "cls", many, "m")
    evicted, kept = fb.send(item("cls", "m0", label("SCORES", [int(classes[0])])),
                            item("cls", "m50", label("SCORES", [int(classes[50])])))
    assert evicted["outcome"] == "UNMATCHED" and kept["outcome"] == "MATCHED"
    c.close()

    # The control address serves feedback too; reflection lists it on both.
    control_fb = feedback_for(srv.control_address)
    assert control_fb.send(item("cls", "x", label("SCORES", [1])))[0]["outcome"] == "UNMATCHED"
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    for address in (srv.address, srv.control_address):
        with grpc.insecure_channel(address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "sidecar.feedback.v1.Feedback" in services, services


# ---- the quality rule ------------------------------------------------------------------

def _send_until(srv: Any, fb: Feedback, model: str, rng: np.random.Generator, *,
                limit: int, batch: int, stop: Any, prefix: str = "r") -> int:
    """Infer and send truth `batch` items at a time (paired: each batch's mirrored copies
    answered first) until `stop()` or `limit` items; the items sent."""
    c = client(srv.address)
    sent = 0
    try:
        while sent < limit and not stop():
            x, classes = inputs(rng, batch)
            served = infer_ids(c, model, x, f"{prefix}{sent}-")
            if set(served) != {"2"}:
                break  # rolled back meanwhile: what is left is not the bad version's
            wait_copies(srv.control_address, model)
            summary = fb.stream([item(model, f"{prefix}{sent}-{i}", label("SCORES", [int(k)]))
                                 for i, k in enumerate(classes)])
            assert summary["matched"] == batch and summary["invalid"] == 0, summary
            sent += batch
    finally:
        c.close()
    return sent


def test_quality_rule_rolls_back_a_worse_version_within_a_few_hundred_items(
        start_server: Any, tmp_path: Path, feedback_for: Any) -> None:
    """Version 2 never predicts class 3 (a quarter of the rows wrong); with the
    defaults the guard rolls it back to version 1 and quarantines it after
    min_samples (200) paired rows, the event carrying the test's figures."""
    repo = tmp_path / "repo"
    write_classifier(repo, "cls", {1: GOOD, 2: WRONG_ON_3}, {"quality": QUALITY})
    srv = start_server(repo, "--no-watch")
    start_probation(srv.control_address, "cls")
    events = EventStream(srv.control_address)
    fb = feedback_for(srv.address)
    try:
        def rolled_back() -> bool:
            return any(e.action == "rollback" and e.actor == "guard" for e in events.of("cls"))

        sent = _send_until(srv, fb, "cls", np.random.default_rng(14), limit=600, batch=25,
                           stop=rolled_back)
        rollback = events.wait_for(model="cls", action="rollback", actor="guard")
        quarantine = events.wait_for(model="cls", action="quarantine", actor="guard")
    finally:
        events.close()
    assert 200 <= sent <= 400, sent
    assert rollback.from_version.number == 2 and rollback.to_version.number == 1
    assert rollback.reason.startswith("quality-drop: accuracy 0.")
    assert "over 200 paired rows: worse by more than 0.02" in rollback.reason
    details = dict(rollback.details)
    assert details["rule"] == "quality-drop" and details["metric"] == "accuracy"
    assert details["drop.rows"] == "200" and int(details["drop.b"]) > 30
    assert details["drop.c"] == "0" and float(details["drop.e_value"]) >= 20
    assert "drop.mcnemar_p" in details and details["previous.value"] == "1"
    assert quarantine.to_version.number == 2
    assert quarantine.reason == "rolled back by the guard: quality-drop"
    assert active_version(srv.control_address, "cls") == 1
    # The restored version is not on probation (as after any rollback by the guard).
    assert "probation_version" not in guard_state(srv.control_address, "cls")


def test_an_equal_version_is_never_rolled_back(start_server: Any, tmp_path: Path,
                                               feedback_for: Any) -> None:
    """Two versions of equal accuracy (each favours another class by the same margin:
    about 96 % right, their errors on different rows), judged after each of 2000
    paired items: no rollback, no proposal."""
    repo = tmp_path / "repo"
    write_classifier(repo, "same", {1: [0.1, 0, 0, 0], 2: [0, 0.1, 0, 0]},
                     {"quality": QUALITY})
    srv = start_server(repo, "--no-watch")
    start_probation(srv.control_address, "same")
    fb = feedback_for(srv.address)
    sent = _send_until(srv, fb, "same", np.random.default_rng(2024), limit=2000, batch=200,
                       stop=lambda: False)
    assert sent == 2000
    state = guard_state(srv.control_address, "same")
    assert state["feedback_paired"] == "2000" and state["quality_paired_rows"] == "2000"
    assert "not shown worse by more than 0.02" in state["quality_verdict"]
    assert active_version(srv.control_address, "same") == 2
    result = ctl(srv.control_address, "--json", "events", "--model", "same")
    actions = [(e["action"], e["actor"]) for e in json.loads(result.stdout)["events"]]
    assert [a for a in actions if a[0] != "restore"] == [("rollback", "test")] * 2, actions


def test_propose_mode_records_a_proposal_and_changes_nothing(
        start_server: Any, tmp_path: Path, feedback_for: Any) -> None:
    """In mode propose the quality rule's verdict is an event rollback-proposed with
    the evidence (seen by `ctl events --json`), and version 2 keeps serving; the
    mode is a guard setting that commands set and check."""
    repo = tmp_path / "repo"
    write_classifier(repo, "prop", {1: GOOD, 2: WRONG_ON_3},
                     {"quality": QUALITY, "guard": {"mode": "propose"}})
    srv = start_server(repo, "--no-watch")
    start_probation(srv.control_address, "prop")
    events = EventStream(srv.control_address)
    fb = feedback_for(srv.address)
    try:
        def proposed() -> bool:
            return any(e.action == "rollback-proposed" for e in events.of("prop"))

        sent = _send_until(srv, fb, "prop", np.random.default_rng(7), limit=600, batch=25,
                           stop=proposed)
        proposal = events.wait_for(model="prop", action="rollback-proposed")
        # More evidence of the same kind is not proposed again while one waits.
        _send_until(srv, fb, "prop", np.random.default_rng(8), limit=50, batch=25,
                    stop=lambda: False, prefix="more")
    finally:
        events.close()
    assert sent <= 400
    assert proposal.actor == "guard" and proposal.reason.startswith("quality-drop: accuracy")
    assert proposal.from_version.number == 2 and proposal.to_version.number == 1
    assert active_version(srv.control_address, "prop") == 2
    result = ctl(srv.control_address, "--json", "events", "--model", "prop")
    assert result.returncode == 0, result.stderr
    logged = [e for e in json.loads(result.stdout)["events"]]
    assert [e["action"] for e in logged].count("rollback-proposed") == 1
    assert not any(e["action"] == "rollback" and e["actor"] == "guard" for e in logged)
    (shown,) = [e for e in logged if e["action"] == "rollback-proposed"]
    assert shown["details"]["rule"] == "quality-drop"
    assert shown["details"]["proposal"] == guard_state(srv.control_address, "prop")["proposal"]
    state = guard_state(srv.control_address, "prop")
    assert state["mode"] == "propose" and state["proposal_versions"] == "2 -> 1"

    stub = control_stub(srv.control_address)
    reply = stub.SetGuard(control_pb2.SetGuardRequest(model="prop", settings={"mode": "off"},
                                                      actor="test"))
    assert reply.settings["mode"] == "off"
    import grpc
    with pytest.raises(grpc.RpcError) as refused:
        stub.SetGuard(control_pb2.SetGuardRequest(model="prop", settings={"mode": "maybe"},
                                                  actor="test"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mode' must be one of auto, propose, off" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        stub.SetGuard(control_pb2.SetGuardRequest(
            model="prop", settings={"quality.metric": "mae"}, actor="test"))
    assert "not valid for task 'classification'" in (refused.value.details() or "")
    reply = stub.SetGuard(control_pb2.SetGuardRequest(
        model="prop", settings={"quality.min_samples": "300"}, actor="test"))
    assert "min_samples 300" in reply.state["quality"]


# ---- approve and dismiss, in process ------------------------------------------------------

class InProcess:
    """A real ModelManager, guard, mirror, quality engine and data plane in this process."""

    def __init__(self, repo: Path, guard: dict[str, Any], quality: dict[str, Any] | None
                 ) -> None:
        self.events = EventLog(None)
        self.manager = ModelManager(repo, SessionConfig(), events=self.events)
        self.guard = Guard(self.manager, defaults=GuardSettings(),
                           settings_source=lambda model: guard)
        self.mirror = ShadowMirror(self.manager, self.guard)
        self.engine = QualityEngine(self.manager, self.guard, self.mirror,
                                    source=lambda model: quality)
        self.pool = ThreadPoolExecutor(2)
        self.plane = DataPlane(self.manager, self.pool, mirror=self.mirror, quality=self.engine)
        self.rng = np.random.default_rng(3)
        self.sent = 0

    async def start(self) -> None:
        await self.manager.start()
        self.guard.start()
        self.engine.start()
        self.mirror.start()
        for _ in range(2):  # version 2 active by a person's command: on probation
            await self.manager.rollback("m", actor="test")

    async def close(self) -> None:
        await self.mirror.close()
        await self.guard.close()
        await self.manager.close()
        self.pool.shutdown()

    async def feed(self, n: int, reward: float | None = None) -> None:
        """n items: infer with an id, let the mirrored copy answer, send the truth."""
        for _ in range(n):
            x, classes = inputs(self.rng, 1)
            request_id = f"r{self.sent}"
            self.sent += 1
            await self.plane.infer(InferRequest("m", id=request_id, inputs=[
                InferInput("INPUT0", "FP32", x.shape, x)]), lambda r: r)
            await self.mirror.idle()  # the previous version answered the copy
            truth = classes.astype(np.int64)
            self.engine.feedback("m", request_id, [InferInput("SCORES", "INT64", (1,), truth)],
                                 reward)
            await asyncio.sleep(0)  # let a scheduled guard action start

    async def feed_until(self, done: Any, limit: int) -> int:
        start = self.sent
        while not done() and self.sent - start < limit:
            await self.feed(1)
        await self.guard.idle()
        return self.sent - start

    def actions(self) -> list[tuple[str, str]]:
        return [(e.action, e.actor) for e in self.events.history() if e.model == "m"]


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for number, bias in {1: GOOD, 2: WRONG_ON_3}.items():
        make_models.write_model(classifier(bias, f"m_v{number}"), repo, "m", number)
    return repo


def test_dismiss_keeps_serving_until_the_evidence_doubles_then_approve_rolls_back(
        tmp_path: Path) -> None:
    """dismiss: event rollback-dismissed by the person, version 2 serves on, the same
    evidence is not proposed again; twice the rows is new evidence, proposed again;
    approve: the rollback and quarantine the guard would do, by the approving person,
    with no probation for the restored version."""
    async def scenario() -> None:
        s = InProcess(_repo(tmp_path), {"mode": "propose"}, QUALITY)
        await s.start()
        try:
            first = await s.feed_until(lambda: bool(s.guard.proposals()), 600)
            assert 200 <= first <= 400
            (proposal,) = s.guard.proposals()
            assert (proposal.model, proposal.from_version, proposal.to_version,
                    proposal.rule) == ("m", 2, 1, "quality-drop")
            assert proposal.key == "quality-drop/accuracy/2-1/128"
            assert proposal.evidence["metric"] == "accuracy" and proposal.approve_at == 0
            assert ("rollback-proposed", "guard") in s.actions()

            decision = await s.guard.dismiss("m", "alice", reason="known issue")
            assert not decision.approved and decision.proposal == proposal
            assert s.guard.proposals() == []
            dismissed = [e for e in s.events.history() if e.action == "rollback-dismissed"]
            assert dismissed[0].actor == "alice" and "known issue" in dismissed[0].reason
            # 200 -> 255 paired rows: the same evidence (bucket 128), not proposed again
            await s.feed(55)
            await s.guard.idle()
            assert s.guard.proposals() == []
            await s.feed_until(lambda: bool(s.guard.proposals()), 10)
            (again,) = s.guard.proposals()
            assert again.key == "quality-drop/accuracy/2-1/256" and again.id != proposal.id
            assert s.manager.entry("m").serving.active.number == 2

            decision = await s.guard.approve("m", "bob")
            assert decision.approved and decision.swap is not None
            assert decision.swap.to_version.number == 1
            serving = s.manager.entry("m").serving
            assert serving.active.number == 1 and serving.previous.number == 2
            assert s.manager.quarantine.get(decision.quarantined, "").startswith(
                f"rolled back on approval of proposal {again.id}: quality-drop")
            rollback = [e for e in s.events.history() if e.action == "rollback"][-1]
            assert rollback.actor == "bob" and rollback.details["approved_by"] == "bob"
            assert rollback.reason.startswith(f"approved proposal {again.id}: quality-drop")
            assert ("quarantine", "bob") in s.actions()
            assert "probation_version" not in s.guard.status("m")
            assert s.guard.proposals() == []
            with pytest.raises(FailedPreconditionError, match="no rollback proposal"):
                await s.guard.approve("m", "bob")
        finally:
            await s.close()

    asyncio.run(scenario())


def test_approve_after_acts_alone_and_a_change_drops_a_stale_proposal(tmp_path: Path) -> None:
    """approve_after_s: nobody answered, the guard approves alone (actor guard). A
    proposal that what serves changed under is dropped: approving it is refused."""
    async def scenario() -> None:
        s = InProcess(_repo(tmp_path), {"mode": "propose", "approve_after_s": 0.01}, QUALITY)
        await s.start()
        try:
            await s.feed_until(lambda: bool(s.guard.proposals()), 600)
            await s.guard.idle()  # the timer, then the approval
            assert s.guard.proposals() == []
            rollback = [e for e in s.events.history() if e.action == "rollback"][-1]
            assert rollback.actor == "guard" and "nobody answered within 0.01 s" in \
                rollback.reason
            assert s.manager.entry("m").serving.active.number == 1
        finally:
            await s.close()

        s = InProcess(_repo(tmp_path), {"mode": "propose"}, QUALITY)
        await s.start()
        try:
            await s.feed_until(lambda: bool(s.guard.proposals()), 600)
            assert s.guard.proposals()
            await s.manager.rollback("m", actor="carol")
            assert s.guard.proposals() == []
            with pytest.raises(FailedPreconditionError):
                await s.guard.approve("m", "bob")
        finally:
            await s.close()

    asyncio.run(scenario())


def test_propose_mode_covers_the_error_rules_and_off_does_nothing(tmp_path: Path) -> None:
    """A version failing every request with x[:, 0] > 0 (make_models.buggy_model): in
    mode propose the guard proposes (rule consecutive-failures or error-ratio) and
    serves on; in mode off it neither acts nor proposes, windows still recorded."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.tiny_model(1), repo, "m", 1)
    make_models.write_model(make_models.buggy_model(2), repo, "m", 2)

    async def run(mode: str) -> tuple[InProcess, int]:
        s = InProcess(repo, {"mode": mode}, None)
        await s.start()
        x = np.full((1, 4), 1.0, np.float32)  # x[:, 0] > 0: version 2 fails
        failures = 0
        for _ in range(40):
            try:
                await s.plane.infer(InferRequest("m", inputs=[
                    InferInput("INPUT0", "FP32", x.shape, x)]), lambda r: r)
            except Exception:
                failures += 1
            await asyncio.sleep(0)
        await s.guard.idle()
        return s, failures

    async def scenario() -> None:
        s, failures = await run("propose")
        try:
            assert failures == 40  # nothing changed: version 2 answered (failed) them all
            (proposal,) = s.guard.proposals()
            assert proposal.rule in ("consecutive-failures", "error-ratio")
            assert [a for a in s.actions() if a[0] == "rollback-proposed"] == [
                ("rollback-proposed", "guard")]
        finally:
            await s.close()
        s, failures = await run("off")
        try:
            assert failures == 40 and s.guard.proposals() == []
            assert not {"rollback", "rollback-proposed", "guard-held"} & {
                a for a, _ in s.actions() if _ == "guard"}
            assert s.guard.status("m")["window_failures"] == "40"
        finally:
            await s.close()

    asyncio.run(scenario())


def test_compare_rows_feedback_counts_and_quality_values(tmp_path: Path) -> None:
    """In mode auto the quality rule rolls back; then `compare` has a row per loaded
    version with its figures and says which one the evidence favours; feedback counts
    and quality values (for Prometheus) are per model and version."""
    async def scenario() -> None:
        s = InProcess(_repo(tmp_path), {}, QUALITY)
        await s.start()
        try:
            sent = await s.feed_until(
                lambda: s.manager.entry("m").serving.active.number == 1, 600)
            assert 200 <= sent <= 400
            await s.feed(10, reward=1.0)  # version 1 answers now, version 2 the copies
            s.engine.feedback("m", "never", [InferInput("SCORES", "INT64", (1,),
                                                        np.zeros(1, np.int64))])
            rows = {r.version: r for r in s.engine.compare("m")}
            assert set(rows) == {1, 2}
            one, two = rows[1], rows[2]
            assert (one.role, two.role) == ("ACTIVE", "PREVIOUS")
            assert one.favoured and not two.favoured and one.favour_reason == two.favour_reason
            accuracy = {v: r.metrics[0] for v, r in rows.items()}
            assert accuracy[1].metric == "accuracy" and accuracy[1].configured
            assert accuracy[1].value == 1.0 and accuracy[1].samples == sent + 10
            assert accuracy[2].value is not None and 0.6 < accuracy[2].value < 0.9
            assert accuracy[2].interval is not None and accuracy[2].interval[1] < 0.95
            assert [m.metric for m in one.metrics] == ["accuracy", "recall", "precision", "f1"]
            assert (one.matched, one.reward_count, one.reward_sum) == (10, 10, 10.0)
            assert two.matched == sent and two.mirrored == 10 and two.requests == sent
            assert one.paired == two.paired == 10 and one.agreement is not None
            counts = {(c.version, c.outcome): c.items for c in s.engine.feedback_counts()}
            assert counts[(2, "matched")] == sent and counts[(1, "matched")] == 10
            assert counts[(0, "unmatched")] == 1 and counts[(0, "invalid")] == 0
            values = {(v.version, v.metric): v for v in s.engine.quality_values()}
            assert values[(1, "accuracy")].value == 1.0
            assert values[(2, "accuracy")].samples == sent + 10
        finally:
            await s.close()

    asyncio.run(scenario())
