"""Hostile clients against a real server: bytes that are no message, huge names,
paths posing as model names, exotic digits as versions, absurd shapes, huge
reasons, inputs that make the model fail, and BYTES tensors big enough to freeze
a server that decodes them on its event loop.

Requests are sent as raw bytes on a grpc channel (or built by hand) where the
client libraries would refuse to send them."""

from __future__ import annotations

import json
import os
import queue
import signal
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
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import (
    EventStream,
    client,
    control_stub,
    control_stub_for,
    infer_input,
    raw_request,
    status_of,
    stub,
    tiny_expected,
    wait_until,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

X = np.ones((1, 4), np.float32)
TOKEN = "s3cret-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
ACTIVATE = "/sidecar.control.v1.ModelControl/Activate"
WATCH_EVENTS = "/sidecar.control.v1.ModelControl/WatchEvents"
BIG = [("grpc.max_send_message_length", 64 << 20),
       ("grpc.max_receive_message_length", 64 << 20)]
#: The longest status message a client may get (the server bounds them to 1000).
MAX_MESSAGE = 1100


# --- helpers -------------------------------------------------------------------

def garbage(message_type: type[Message]) -> list[bytes]:
    """Payloads that do not parse as `message_type` (checked here, so the test
    really sends garbage): random bytes, an endless varint, a truncated field."""
    payloads = [np.random.default_rng(7).bytes(1024), b"\xff" * 64,
                b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10]
    for payload in payloads:
        with pytest.raises(DecodeError):
            message_type.FromString(payload)
    return payloads


def ctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONTROL_TOKEN"}
    return subprocess.run([sys.executable, "-m", "sidecar", "ctl", "--address", address, *args],
                          capture_output=True, text=True, timeout=60, env=env)


def ctl_json(address: str, *args: str) -> Any:
    result = ctl(address, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def bad_log_records(srv: ServerProcess, metadata: list[tuple[str, str]] | None = None
                    ) -> list[dict[str, Any]]:
    """Every error-level or traceback-carrying record the server logged so far.

    A Pin command's log line is waited for first: lines come in order on stdout,
    so every line the earlier requests caused has been read by then."""
    control_stub(srv.control_address).Pin(cpb.PinRequest(model="tiny", reason="log marker"),
                                          timeout=10, metadata=metadata)
    srv.wait_for("pin", model="tiny")
    needles = ("unexpected error", "Exception deserializing", "Traceback")
    return [r for r in srv.log
            if r.get("level") in {"error", "critical"} or "exception" in r
            or any(n in str(r.get("event", "")) + str(r.get("line", "")) for n in needles)]


def stop_and_read_stderr(srv: ServerProcess) -> str:
    """Stop the server (it must exit 0) and return what it wrote on stderr."""
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=60) == 0
    assert srv.proc.stderr is not None
    return srv.proc.stderr.read()


def served_models(srv: ServerProcess) -> list[str]:
    return sorted(m["name"] for m in ctl_json(srv.control_address, "models")["models"])


def server_ready(srv: ServerProcess) -> bool:
    with srv.channel() as channel:
        return bool(stub(channel).ServerReady(pb.ServerReadyRequest(), timeout=10).ready)


def healthy(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=60).status)


def one_line(message: str) -> bool:
    return "\n" not in message and 0 < len(message) < MAX_MESSAGE


def small_repo(root: Path) -> Path:
    """tiny v1+v2 and text v1."""
    make_models.build_examples(root)
    return root


@pytest.fixture
def events_of() -> Iterator[Any]:
    """Follow a server's events; the streams are closed after the test."""
    streams: list[EventStream] = []

    def follow(srv: ServerProcess) -> EventStream:
        streams.append(EventStream(srv.control_address))
        return streams[-1]

    yield follow
    for stream in streams:
        stream.close()


# --- 1. bytes that are no message --------------------------------------------------

def test_garbage_payloads_are_invalid_argument_and_never_logged_as_errors(
        start_server: Any, tmp_path: Path) -> None:
    """Payloads that do not parse get INVALID_ARGUMENT in one line (not UNKNOWN) on
    both ports, unary and streaming, and leave no error or traceback in the log."""
    srv: ServerProcess = start_server(small_repo(tmp_path / "repo"))
    good = raw_request("tiny", [("INPUT0", "FP32", X)]).SerializeToString()
    with srv.channel() as channel:
        infer = channel.unary_unary(INFER)
        for payload in garbage(pb.ModelInferRequest):
            code, message = status_of(lambda payload=payload: infer(payload, timeout=10))
            assert code == "INVALID_ARGUMENT" and one_line(message), (code, message)
            assert "ModelInfer" in message
        # on a stream, garbage is answered in error_message and the stream goes on
        stream = channel.stream_stream(
            STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString)
        first, second = list(stream(iter([garbage(pb.ModelInferRequest)[0], good]),
                                    timeout=10))
        assert "not a valid" in first.error_message and one_line(first.error_message)
        assert second.error_message == "" and second.infer_response.model_version == "2"
    with srv.control_channel() as channel:
        activate = channel.unary_unary(ACTIVATE)
        for payload in garbage(cpb.ActivateRequest):
            code, message = status_of(lambda payload=payload: activate(payload, timeout=10))
            assert code == "INVALID_ARGUMENT" and one_line(message), (code, message)
            assert "Activate" in message
        watch = channel.unary_stream(WATCH_EVENTS)
        code, message = status_of(
            lambda: list(watch(garbage(cpb.WatchEventsRequest)[0], timeout=10)))
        assert code == "INVALID_ARGUMENT" and one_line(message), (code, message)
    assert bad_log_records(srv) == []
    assert served_models(srv) == ["text", "tiny"]
    stderr = stop_and_read_stderr(srv)
    assert "Traceback" not in stderr and "deserializ" not in stderr, stderr


def test_garbage_without_a_token_is_unauthenticated_first(start_server: Any,
                                                          tmp_path: Path) -> None:
    """With a control token set, garbage without the token is UNAUTHENTICATED, with
    it INVALID_ARGUMENT; the inference port needs no token; nothing is logged as an
    error."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    srv: ServerProcess = start_server(small_repo(tmp_path / "repo"),
                                      "--control-token-file", str(token_file))
    payload = garbage(cpb.ActivateRequest)[0]
    with srv.control_channel() as channel:
        activate = channel.unary_unary(ACTIVATE)
        code, message = status_of(lambda: activate(payload, timeout=10))
        assert code == "UNAUTHENTICATED" and "bearer token" in message, (code, message)
        code, message = status_of(lambda: activate(
            payload, timeout=10, metadata=[("authorization", "Bearer guess")]))
        assert code == "PERMISSION_DENIED", (code, message)
        code, message = status_of(lambda: activate(payload, timeout=10, metadata=AUTH))
        assert code == "INVALID_ARGUMENT" and one_line(message), (code, message)
        infer = channel.unary_unary(INFER)
        code, _ = status_of(lambda: infer(garbage(pb.ModelInferRequest)[0], timeout=10))
        assert code == "UNAUTHENTICATED"
    with srv.channel() as channel:
        infer = channel.unary_unary(INFER)
        code, message = status_of(lambda: infer(garbage(pb.ModelInferRequest)[0], timeout=10))
        assert code == "INVALID_ARGUMENT" and one_line(message), (code, message)
    assert bad_log_records(srv, metadata=AUTH) == []


# --- 2. a 20 KB model name ---------------------------------------------------------

HUGE_NAME = "m" * 20_000


def test_huge_model_name_is_not_found_with_a_short_message(server: ServerProcess) -> None:
    """A 20 KB model name gets NOT_FOUND with a message of bounded length, from
    tritonclient and from a hand-built request alike."""
    code, message = status_of(lambda: client(server.address).infer(
        HUGE_NAME, [infer_input("INPUT0", X, "FP32")]))
    assert code == "NOT_FOUND" and one_line(message), (code, len(message))
    with server.channel() as channel:
        code, message = status_of(lambda: stub(channel).ModelInfer(
            raw_request(HUGE_NAME, [("INPUT0", "FP32", X)], id="i" * 20_000), timeout=10))
    assert code == "NOT_FOUND" and one_line(message), (code, len(message))


def test_huge_model_name_keeps_the_stream_alive(server: ServerProcess) -> None:
    """On ModelStreamInfer, a 20 KB model name is answered with a bounded error and
    the next request on the same stream (sent only after that answer) is served."""
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    with server.channel() as channel:
        responses = stub(channel).ModelStreamInfer(iter(requests.get, None), timeout=30)
        requests.put(raw_request(HUGE_NAME, [("INPUT0", "FP32", X)]))
        first = next(responses)
        requests.put(raw_request("tiny", [("INPUT0", "FP32", X)], id="after"))
        second = next(responses)
        requests.put(None)
        assert list(responses) == []
    assert "unknown model" in first.error_message and one_line(first.error_message)
    assert second.error_message == "" and second.infer_response.id == "after"
    assert second.infer_response.model_version == "2"


# --- 3. names are names --------------------------------------------------------------

NOT_NAMES = ["../outside/evil", "<abs>", ".", "", "tiny/1"]


def _names_repo(tmp_path: Path) -> tuple[Path, Path]:
    """The repository, and beside it a real model outside it (reachable as
    '../outside/evil' from the repository, and by absolute path)."""
    repo = small_repo(tmp_path / "repo")
    outside = tmp_path / "outside"
    make_models.write_model(make_models.tiny_model(1), outside, "evil", 1)
    make_models.write_model(make_models.tiny_model(1), outside, "evil2", 1)
    return repo, outside


def _outcome(call: Any) -> tuple[str, str]:
    """A call's status name and message ("OK" if it succeeded)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def _check_only_real_models(srv: ServerProcess, bad_names: list[str]) -> None:
    assert server_ready(srv)
    assert served_models(srv) == ["text", "tiny"]
    with srv.channel() as channel:
        index = stub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert {m.name for m in index.models} == {"text", "tiny"}
        for name in bad_names:
            code, _ = status_of(lambda name=name: stub(channel).ModelInfer(
                raw_request(name, [("INPUT0", "FP32", X)]), timeout=10))
            assert code in {"NOT_FOUND", "INVALID_ARGUMENT"}, (name, code)


def test_paths_posing_as_model_names_are_refused(start_server: Any, tmp_path: Path) -> None:
    """RepositoryModelLoad and Activate with '..', absolute, '.', empty and nested
    names are INVALID_ARGUMENT; nothing outside the repository is served, the server
    stays ready and lists only the real models, also after a restart."""
    repo, outside = _names_repo(tmp_path)
    state = tmp_path / "state"
    srv: ServerProcess = start_server(repo, state_dir=state)
    names = [str(outside / "evil") if n == "<abs>" else n for n in NOT_NAMES]
    outcomes: dict[str, tuple[str, str]] = {}
    with srv.control_channel() as channel:
        inference, control = stub(channel), control_stub_for(channel)
        for name in names:
            outcomes[f"load {name!r}"] = _outcome(lambda name=name: inference.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name), timeout=30))
        for name in (str(outside / "evil2"), "../outside/evil2"):
            outcomes[f"activate {name!r}"] = _outcome(lambda name=name: control.Activate(
                cpb.ActivateRequest(model=name, version="1", force=True), timeout=30))
    wrong = {what: o for what, o in outcomes.items()
             if o[0] != "INVALID_ARGUMENT" or not one_line(o[1])}
    assert wrong == {}
    refused = [*names, str(outside / "evil2"), "../outside/evil2"]
    _check_only_real_models(srv, refused)
    assert srv.stop() == 0
    again: ServerProcess = start_server(repo, state_dir=state)
    _check_only_real_models(again, refused)
    assert {e["model"] for e in ctl_json(again.control_address, "events")["events"]} <= {
        "text", "tiny"}


# --- 4. versions are ASCII digits ------------------------------------------------------

#: superscript two, circled one, Arabic-Indic four, full-width four: str.isdigit() says
#: yes to each, and int() takes all but the first two.
EXOTIC_VERSIONS = ["\u00b2", "\u2460", "\u0664", "\uff14", "9" * 5000]


@pytest.mark.parametrize("version", EXOTIC_VERSIONS,
                         ids=["superscript", "circled", "arabic-indic", "fullwidth", "5000-digits"])
def test_exotic_version_strings_are_not_found(server: ServerProcess, version: str) -> None:
    """A version that is not plain ASCII digits is NOT_FOUND or INVALID_ARGUMENT in
    one bounded line, never INTERNAL."""
    with server.channel() as channel:
        code, message = status_of(lambda: stub(channel).ModelInfer(
            raw_request("tiny", [("INPUT0", "FP32", X)], model_version=version), timeout=10))
        assert code in {"NOT_FOUND", "INVALID_ARGUMENT"}, (code, message[:200])
        assert one_line(message)
        ready = stub(channel).ModelReady(
            pb.ModelReadyRequest(name="tiny", version=version), timeout=10)
        assert ready.ready is False


def test_exotic_version_folders_are_ignored_and_the_watcher_goes_on(
        start_server: Any, tmp_path: Path, events_of: Any) -> None:
    """Version folders named '²' and '٤٠' (holding valid models) neither stop the
    start nor become versions; a real version 3 published later is activated."""
    repo = small_repo(tmp_path / "repo")
    for folder in ("\u00b2", "\u0664\u0660"):  # "²", "٤٠" (forty)
        path = repo / "tiny" / folder / "model.onnx"
        path.parent.mkdir()
        path.write_bytes(make_models.tiny_model(9).SerializeToString())
    srv: ServerProcess = start_server(repo)
    events = events_of(srv)
    versions = ctl_json(srv.control_address, "versions", "tiny")["versions"]
    assert [int(v["number"]) for v in versions] == [1, 2]
    staging = repo / "tiny" / ".staging-3"
    make_models.write_model(make_models.tiny_model(3), staging, "m", 3)
    (staging / "m" / "3").rename(repo / "tiny" / "3")
    activated = events.wait_for(model="tiny", action="activate", to=3)
    assert activated.actor == "watcher"
    versions = ctl_json(srv.control_address, "versions", "tiny")["versions"]
    assert [int(v["number"]) for v in versions] == [1, 2, 3]
    result = client(srv.address).infer("tiny", [infer_input("INPUT0", X, "FP32")])
    assert result.get_response().model_version == "3"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(X, 3), rtol=1e-5)


# --- 5. shapes ---------------------------------------------------------------------------

SHAPES = [[1] * 100, [2**40, 2**40], [0, 2**62]]


@pytest.mark.parametrize("shape", SHAPES, ids=["rank-100", "product-overflows", "zero-times-huge"])
@pytest.mark.parametrize(("model", "name", "datatype"),
                         [("tiny", "INPUT0", "FP32"), ("text", "TEXT", "BYTES")])
def test_absurd_shapes_are_invalid_argument(server: ServerProcess, shape: list[int], model: str,
                                            name: str, datatype: str) -> None:
    """Shapes no tensor can have are INVALID_ARGUMENT with a reason, never INTERNAL."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(b"\x00\x00\x00\x00")
    with server.channel() as channel:
        code, message = status_of(lambda: stub(channel).ModelInfer(request, timeout=30))
    assert code == "INVALID_ARGUMENT", (code, message)
    assert one_line(message) and name in message
    assert any(word in message for word in ("dimensions", "elements", "shape")), message


# --- 6. huge reasons -------------------------------------------------------------------------

def test_a_four_megabyte_reason_is_refused(start_server: Any, tmp_path: Path) -> None:
    """Pin with a 4 MB reason is INVALID_ARGUMENT, five times over; the model is not
    pinned and ListEvents still answers (within grpc's default 4 MB)."""
    srv: ServerProcess = start_server(small_repo(tmp_path / "repo"))
    reason = "r" * (4 << 20)
    with grpc.insecure_channel(srv.control_address, options=BIG) as channel:
        control = control_stub_for(channel)
        for _ in range(5):
            code, message = status_of(lambda: control.Pin(
                cpb.PinRequest(model="tiny", reason=reason), timeout=30))
            assert code == "INVALID_ARGUMENT" and one_line(message), (code, message[:200])
    stub_ = control_stub(srv.control_address)  # grpc's default limits, as most clients
    listed = stub_.ListEvents(cpb.ListEventsRequest(limit=1000), timeout=30)
    assert [e.action for e in listed.events if e.action == "pin"] == []
    assert all(len(e.reason) <= 1024 for e in listed.events)
    models = stub_.ListModels(cpb.ListModelsRequest(), timeout=10).models
    assert [m.pinned for m in models] == [False, False]


# --- 7. client input never rolls back a healthy version ---------------------------------------

def _guard_state(srv: ServerProcess, model: str) -> dict[str, str]:
    return dict(control_stub(srv.control_address).GetGuard(
        cpb.GetGuardRequest(model=model), timeout=10).state)


def _versions(srv: ServerProcess, model: str) -> dict[int, tuple[str, bool]]:
    versions = control_stub(srv.control_address).ListVersions(
        cpb.ListVersionsRequest(model=model), timeout=10).versions
    return {v.number: (v.state, v.quarantined) for v in versions}


def _guard_events(srv: ServerProcess, model: str) -> list[str]:
    listed = control_stub(srv.control_address).ListEvents(
        cpb.ListEventsRequest(model=model, limit=1000), timeout=10)
    return [e.action for e in listed.events if e.actor == "guard"]


def test_inputs_the_model_cannot_run_never_roll_back(start_server: Any, tmp_path: Path) -> None:
    """An empty BYTES batch passes the signature but onnxruntime refuses it on every
    version: on a new version on probation, eight such requests are INVALID_ARGUMENT
    and the version is neither rolled back nor quarantined."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.text_model(), repo, "text", 1)
    make_models.write_model(make_models.tiny_model(1), repo, "tiny", 1)
    srv: ServerProcess = start_server(repo, "--no-watch")
    second = make_models.text_model()
    second.doc_string = "text, version 2"  # the same graph, other bytes: another digest
    make_models.write_model(second, repo, "text", 2)
    control_stub(srv.control_address).Activate(
        cpb.ActivateRequest(model="text", version="2"), timeout=30)
    assert _guard_state(srv, "text")["probation_version"] == "2"
    empty = pb.ModelInferRequest(model_name="text")
    empty.inputs.add(name="TEXT", datatype="BYTES", shape=[0])
    empty.raw_input_contents.append(b"")
    with srv.channel() as channel:
        answers = [_outcome(lambda: stub(channel).ModelInfer(empty, timeout=30))
                   for _ in range(8)]
    assert _guard_events(srv, "text") == []
    assert _versions(srv, "text") == {1: ("PREVIOUS", False), 2: ("ACTIVE", False)}
    state = _guard_state(srv, "text")
    assert (state["probation_version"], state["window_failures"]) == ("2", "0")
    assert {code for code, _ in answers} == {"INVALID_ARGUMENT"}, answers[0]
    assert all(one_line(message) for _, message in answers), answers[0]
    text = infer_input("TEXT", np.array([b"still", b"here"], dtype=object), "BYTES")
    result = client(srv.address).infer("text", [text])
    assert result.get_response().model_version == "2"
    assert result.as_numpy("UPPER").tolist() == [b"STILL", b"HERE"]


def test_nan_inputs_never_roll_back_with_fail_on_nonfinite(start_server: Any,
                                                           tmp_path: Path) -> None:
    """With fail_on_nonfinite=true, NaN outputs of NaN inputs are the input's doing:
    eight such requests on a version on probation never count as its failures, are
    never INTERNAL, and it is neither rolled back nor quarantined."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        make_models.write_model(make_models.tiny_model(version), repo, "tiny", version)
    srv: ServerProcess = start_server(repo, "--no-watch")
    make_models.write_model(make_models.tiny_model(3), repo, "tiny", 3)
    control_stub(srv.control_address).Activate(
        cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
    set_guard = ctl(srv.control_address, "guard", "tiny", "fail_on_nonfinite=true")
    assert set_guard.returncode == 0, set_guard.stderr
    c = client(srv.address)
    nan = np.full((2, 4), np.nan, np.float32)
    answers: list[str] = []
    for _ in range(8):
        try:
            result = c.infer("tiny", [infer_input("INPUT0", nan, "FP32")])
        except InferenceServerException as exc:
            answers.append(f"{exc.status()}: {exc.message()}")
        else:
            answers.append(f"version {result.get_response().model_version}")
    assert _guard_events(srv, "tiny") == []
    assert _versions(srv, "tiny") == {1: ("UNLOADED", False), 2: ("PREVIOUS", False),
                                      3: ("ACTIVE", False)}
    state = _guard_state(srv, "tiny")
    assert (state["probation_version"], state["window_failures"]) == ("3", "0")
    # answered by version 3 (NaN in, NaN out), or refused as the input's fault
    assert all(a == "version 3" or a.startswith("StatusCode.INVALID_ARGUMENT") for a in answers
               ), answers


# --- 8. a BYTES request must not freeze the server ---------------------------------------------

#: The most elements a BYTES tensor may have (README, Errors); more are refused
#: before anything is decoded.
BYTES_CAP = 1 << 20


def _inflight(srv: ServerProcess, model: str) -> int:
    versions = control_stub(srv.control_address).ListVersions(
        cpb.ListVersionsRequest(model=model), timeout=60).versions
    return sum(v.counters.inflight for v in versions)


def _bytes_request(model: str, payload: bytes) -> pb.ModelInferRequest:
    """A BYTES tensor for the text model's input, one element per 4-byte prefix."""
    request = pb.ModelInferRequest(model_name=model, id="big")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(payload) // 4])
    request.raw_input_contents.append(payload)
    return request


def _health_while_in_flight(server: ServerProcess, request: pb.ModelInferRequest
                            ) -> tuple[dict[str, Any], bool, int, bool]:
    """Send `request` in a thread; once the text model has it in flight, ask for
    the server's health on another channel. Returns the request's outcome
    ("response" or "error": (code, message)), whether it was seen in flight, the
    health status, and whether that status came before the request's answer."""
    done = threading.Event()
    outcome: dict[str, Any] = {}
    with grpc.insecure_channel(server.address, options=BIG) as channel:

        def run() -> None:
            try:
                outcome["response"] = stub(channel).ModelInfer(request, timeout=120)
            except grpc.RpcError as exc:
                outcome["error"] = (exc.code().name, exc.details())
            finally:
                done.set()

        worker = threading.Thread(target=run)
        worker.start()
        try:
            wait_until(lambda: done.is_set() or _inflight(server, "text") > 0, timeout=60,
                       what="the big request in flight")
            seen_in_flight = not done.is_set()
            status = healthy(server.address)
            answered_in_flight = not done.is_set()
        finally:
            worker.join(timeout=120)
    return outcome, seen_in_flight, status, answered_in_flight


def test_bytes_tensors_beyond_the_cap_are_refused(server: ServerProcess) -> None:
    """Two million zero-length BYTES elements are refused in one line before any
    is decoded, for the text model and for an unknown model; at the cap, an
    unknown model is NOT_FOUND."""
    over = b"\x00\x00\x00\x00" * 2_000_000
    with grpc.insecure_channel(server.address, options=BIG) as channel:
        code, message = status_of(lambda: stub(channel).ModelInfer(
            _bytes_request("text", over), timeout=60))
        assert code == "INVALID_ARGUMENT" and str(BYTES_CAP) in message, (code, message)
        code, message = status_of(lambda: stub(channel).ModelInfer(
            _bytes_request("nosuch", over), timeout=60))
        assert code in {"NOT_FOUND", "INVALID_ARGUMENT"} and one_line(message), (code, message)
        code, message = status_of(lambda: stub(channel).ModelInfer(
            _bytes_request("nosuch", b"\x00\x00\x00\x00" * BYTES_CAP), timeout=60))
        assert code == "NOT_FOUND" and "nosuch" in message, (code, message)


def test_a_huge_bytes_request_does_not_freeze_the_server(server: ServerProcess) -> None:
    """A BYTES tensor of 2^20 empty elements (the cap) for the text model: a health
    check on another channel is answered SERVING while the request is in flight
    (before its answer arrives), and the request is served."""
    outcome, seen_in_flight, status, answered_in_flight = _health_while_in_flight(
        server, _bytes_request("text", b"\x00\x00\x00\x00" * BYTES_CAP))
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.model_version == "1" and response.id == "big"
    assert len(response.raw_output_contents[0]) == 4 * BYTES_CAP
    assert seen_in_flight, "the request was answered before it was seen in flight"
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert answered_in_flight, "the health check was answered only after the big request"


def test_decoding_a_huge_bytes_request_does_not_freeze_the_server(server: ServerProcess
                                                                  ) -> None:
    """2^20 BYTES elements whose last length prefix overruns the buffer: the server
    decodes them off its event loop (health answered SERVING meanwhile), then
    answers INVALID_ARGUMENT naming the element."""
    payload = b"\x00\x00\x00\x00" * (BYTES_CAP - 1) + b"\x01\x00\x00\x00"
    outcome, seen_in_flight, status, answered_in_flight = _health_while_in_flight(
        server, _bytes_request("text", payload))
    code, message = outcome.get("error", ("OK", ""))
    assert code == "INVALID_ARGUMENT" and f"element {BYTES_CAP - 1}" in message, outcome
    assert seen_in_flight, "the request was answered before it was seen in flight"
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert answered_in_flight, "the health check was answered only after the big request"
