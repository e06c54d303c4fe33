"""Dynamic batching seen from outside: real `sidecar serve` processes, real models
(examples/make_models.py), tritonclient, and every answer checked against a local
onnxruntime run of the version the answer names.

Batches form only while an earlier run of the same queue computes, so the
batched models are slow by construction (slow_model, buggy_model with layers):
a test that needs a batch larger than 1 sends waves of concurrent requests until
ModelStatistics' batch_stats shows one, within a bounded number of waves. The
evidence of batching is what a client can see: batch_stats (one entry per batch
size, compute_infer.count = runs of that size), execution_count (runs) below
inference_count (rows).

Most tests share one server (`shared`, one model per test, so statistics do not
mix); the shutdown test has its own.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from conftest import ServerProcess
from helpers import client, control_stub, infer_input, wait_until
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

#: MatMul+Tanh layers of the slow models: about 0.8 ms for one row here, 0.3 ms a
#: row in a batch (the "wave" model has twice as many).
SLOW_LAYERS = 256
#: Concurrent requests per wave, and the most waves a test sends to see a batch.
WAVE = 8
MAX_WAVES = 25
MAX_BATCH = 16
#: The server's default for models whose sidecar.json has no dynamic_batching.
DEFAULT_MAX_BATCH = 8


def _batching(max_batch_size: int, delay_us: int = 2000) -> dict[str, Any]:
    return {"dynamic_batching": {"max_batch_size": max_batch_size,
                                 "max_queue_delay_microseconds": delay_us}}


def fixed_batch_model() -> onnx.ModelProto:
    """tiny v1's computation with a fixed first dimension: FP32 [2, 4] -> [2, 3].
    It has no batch dimension, so dynamic batching must be refused for it."""
    w, b = make_models.tiny_weights(1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["OUTPUT0"])],
        "fixed_batch",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, ir_version=make_models.IR_VERSION,
                              opset_imports=[helper.make_opsetid("", make_models.OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


class Reference:
    """Local onnxruntime sessions of the versions a model serves: the expected answers."""

    def __init__(self, versions: dict[int, onnx.ModelProto]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self._sessions = {
            v: ort.InferenceSession(m.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
            for v, m in versions.items()}

    def check(self, answer: Any, x: np.ndarray, version: int | None = None,
              request_id: str = "") -> int:
        """Assert `answer` (an InferResult, or the exception a call raised) is the
        right output for `x` from the version it names (and asked for, if given);
        return that version."""
        if isinstance(answer, BaseException):
            raise AssertionError(f"request {request_id!r} failed: {answer}")
        response = answer.get_response()
        named = int(response.model_version)
        assert version is None or named == version, (
            f"request {request_id!r} asked for version {version}, answered by {named}")
        assert response.id == request_id
        expected = self._sessions[named].run(None, {"INPUT0": x})[0]
        output = answer.as_numpy("OUTPUT0")
        assert output.shape == expected.shape, (request_id, output.shape, expected.shape)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4,
                                   err_msg=f"request {request_id!r}, version {named}")
        return named


@dataclass
class Stats:
    rows: int  # inference_count
    runs: int  # execution_count
    failed: int  # inference_stats.fail.count
    batches: dict[int, int]  # batch size -> runs of that size (batch_stats)

    @property
    def largest(self) -> int:
        return max(self.batches, default=0)


def statistics(address: str, model: str, version: str) -> Stats:
    c = client(address)
    try:
        (row,) = c.get_inference_statistics(model, version).model_stats
    finally:
        c.close()
    return Stats(row.inference_count, row.execution_count, row.inference_stats.fail.count,
                 {b.batch_size: b.compute_infer.count for b in row.batch_stats})


def inflight(stub: Any, model: str, version: int) -> int:
    """Requests holding the version now (queued in its batcher included); `stub`:
    a ModelControl stub."""
    versions = stub.ListVersions(cpb.ListVersionsRequest(model=model), timeout=10).versions
    return next(v.counters.inflight for v in versions if v.number == version)


@dataclass
class Request:
    model: str
    x: np.ndarray
    id: str
    version: int | None = None
    timeout: float | None = 60.0


class Clients:
    """A pool of WAVE threads, each with its own tritonclient (its own channel)."""

    def __init__(self, address: str, threads: int = WAVE) -> None:
        self._address = address
        self._local = threading.local()
        self._made: list[tc.InferenceServerClient] = []
        self._lock = threading.Lock()
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads)

    def client(self) -> tc.InferenceServerClient:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = client(self._address)
            with self._lock:
                self._made.append(c)
        return c

    def send(self, request: Request) -> Any:
        """The InferResult, or the InferenceServerException the call raised."""
        try:
            return self.client().infer(
                request.model, [infer_input("INPUT0", request.x, "FP32")],
                model_version="" if request.version is None else str(request.version),
                request_id=request.id, client_timeout=request.timeout)
        except InferenceServerException as exc:
            return exc

    def wave(self, requests: list[Request]) -> list[Any]:
        """Send the requests at once (one per thread, released together)."""
        assert len(requests) <= self.threads
        barrier = threading.Barrier(len(requests))

        def one(request: Request) -> Any:
            barrier.wait(timeout=60)
            return self.send(request)

        return list(self.pool.map(one, requests))

    def close(self) -> None:
        self.pool.shutdown()
        for c in self._made:
            c.close()


@dataclass
class Shared:
    server: ServerProcess
    refs: dict[str, Reference] = field(default_factory=dict)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One server, one model per test. `--no-guard`: the buggy model must stay
    active; the server default batches models whose sidecar.json says nothing."""
    repo = tmp_path_factory.mktemp("batching")
    refs: dict[str, Reference] = {}

    def add(name: str, versions: dict[int, onnx.ModelProto],
            settings: dict[str, Any] | None) -> None:
        for number, model in versions.items():
            make_models.write_model(model, repo, name, number)
        if settings is not None:
            (repo / name / "sidecar.json").write_text(json.dumps(settings))
        refs[name] = Reference(versions)

    slow = {v: make_models.slow_model(v, layers=SLOW_LAYERS) for v in (1, 2)}
    tiny = {1: make_models.tiny_model(1)}
    add("wave", {1: make_models.slow_model(1, layers=2 * SLOW_LAYERS)}, _batching(MAX_BATCH))
    add("mixed", slow, _batching(MAX_BATCH))
    add("swapped", slow, _batching(MAX_BATCH))
    add("buggy", {1: make_models.buggy_model(1, layers=SLOW_LAYERS)}, _batching(MAX_BATCH))
    add("deadline", {1: slow[1]}, _batching(4096))
    add("lone", {1: slow[1]}, None)  # batches by the server default
    add("fixed", {1: fixed_batch_model()}, _batching(MAX_BATCH))
    add("badsize", tiny, {"dynamic_batching": {"max_batch_size": -1}})
    add("badkey", tiny, {"dynamic_batching": {"max_batch_size": 8, "max_delay_us": 100}})
    server = ServerProcess(repo, "--no-guard", "--max-batch-size", str(DEFAULT_MAX_BATCH),
                           "--max-queue-delay-us", "5000")
    yield Shared(server, refs)
    assert server.stop() == 0, server.proc.stderr


@pytest.fixture
def clients(shared: Shared) -> Iterator[Clients]:
    pool = Clients(shared.server.address)
    yield pool
    pool.close()


def waves_until_batched(clients: Clients, make: Callable[[int, int], Request],
                        check: Callable[[Request, Any], None],
                        batched: Callable[[], bool]) -> int:
    """Send waves of WAVE concurrent requests (`make(wave, i)`), checking every
    answer, until `batched()`; returns the waves sent. Bounded: fails after MAX_WAVES."""
    for n in range(1, MAX_WAVES + 1):
        requests = [make(n, i) for i in range(WAVE)]
        for request, answer in zip(requests, clients.wave(requests), strict=True):
            check(request, answer)
        if batched():
            return n
    raise AssertionError(f"no batch larger than 1 formed in {MAX_WAVES} waves of {WAVE}"
                         " concurrent requests")


def _rows(rng: np.random.Generator, rows: int = 1) -> np.ndarray:
    return rng.standard_normal((rows, 4)).astype(np.float32)


# ---- 1. batching itself -------------------------------------------------------------


def test_concurrent_single_rows_run_batched_and_each_gets_its_own_rows(
        shared: Shared, clients: Clients) -> None:
    """Waves of concurrent batch-1 requests with distinct inputs: each answer holds
    the rows of its own input, and batch_stats shows a batch of more than one row;
    every row is counted once, in runs fewer than the rows."""
    srv, ref, rng = shared.server, shared.refs["wave"], np.random.default_rng(1)
    waves = waves_until_batched(
        clients, lambda n, i: Request("wave", _rows(rng), f"w{n}-{i}"),
        lambda r, a: ref.check(a, r.x, 1, r.id),
        lambda: statistics(srv.address, "wave", "1").largest > 1)
    stats = statistics(srv.address, "wave", "1")
    assert stats.rows == waves * WAVE, stats
    assert stats.runs < stats.rows, stats
    assert sum(size * runs for size, runs in stats.batches.items()) == stats.rows, stats
    assert sum(stats.batches.values()) == stats.runs, stats
    assert stats.largest <= MAX_BATCH, stats


def test_a_batch_never_mixes_versions(shared: Shared, clients: Clients) -> None:
    """Versions 1 (warm) and 2 (active) both loaded; concurrent requests naming 1
    or 2: every answer names the version asked for and is that version's, both
    versions run batches of more than one row, and each version counts exactly
    the rows asked of it."""
    srv, ref, rng = shared.server, shared.refs["mixed"], np.random.default_rng(2)
    models = control_stub(srv.control_address).ListModels(cpb.ListModelsRequest(), timeout=10)
    mixed = next(m for m in models.models if m.name == "mixed")
    assert (mixed.active.number, mixed.previous.number) == (2, 1)  # 1 is warm
    asked = {1: 0, 2: 0}

    def make(n: int, i: int) -> Request:
        version = 1 + i % 2
        x = _rows(rng, 1 + (n + i) % 3)
        asked[version] += len(x)
        return Request("mixed", x, f"m{n}-{i}", version=version)

    waves_until_batched(
        clients, make, lambda r, a: ref.check(a, r.x, r.version, r.id),
        lambda: all(statistics(srv.address, "mixed", v).largest > 1 for v in ("1", "2")))
    for version, rows in asked.items():
        stats = statistics(srv.address, "mixed", str(version))
        assert stats.rows == rows and stats.failed == 0, (version, rows, stats)
        assert sum(size * runs for size, runs in stats.batches.items()) == rows, stats


def test_swaps_under_batched_load_fail_no_request(shared: Shared) -> None:
    """Six clients send batches of 1-3 rows without naming a version while the
    control plane activates version 1 and rolls back to 2, 20 times or more: no
    call fails, every answer is the version it names, both versions answer, some
    batches hold more than one request, and each version counted exactly the rows
    it answered."""
    srv, ref = shared.server, shared.refs["swapped"]
    stop = threading.Event()
    progress = threading.Condition()
    answered = {1: 0, 2: 0}
    rows_by = {1: 0, 2: 0}
    problems: list[str] = []

    def hammer(k: int) -> None:
        c = client(srv.address)
        rng = np.random.default_rng(300 + k)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                x = _rows(rng, int(rng.integers(1, 4)))
                rid = f"s{k}-{n}"
                try:
                    answer = c.infer("swapped", [infer_input("INPUT0", x, "FP32")],
                                     request_id=rid, client_timeout=60)
                    version = ref.check(answer, x, request_id=rid)
                except (InferenceServerException, AssertionError) as exc:
                    with progress:
                        problems.append(f"{rid}: {exc}")
                        progress.notify_all()
                    continue
                with progress:
                    answered[version] += 1
                    rows_by[version] += len(x)
                    progress.notify_all()
        finally:
            c.close()

    def batched() -> bool:
        return any(statistics(srv.address, "swapped", v).largest > 1 for v in ("1", "2"))

    stub = control_stub(srv.control_address)
    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    swaps = 0
    try:
        while swaps < 20 or not batched():
            assert swaps < 200, "no batch larger than 1 formed in 200 swaps under load"
            with progress:  # some answers between two swaps
                target = sum(answered.values()) + 6
                assert progress.wait_for(
                    lambda t=target: sum(answered.values()) >= t or bool(problems), timeout=60
                ), "no answers within 60 s"
                assert not problems, problems[:3]
            if swaps % 2 == 0:
                stub.Activate(cpb.ActivateRequest(model="swapped", version="1"), timeout=30)
            else:
                stub.Rollback(cpb.RollbackRequest(model="swapped"), timeout=30)
            swaps += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not problems, problems[:3]
    assert answered[1] > 0 and answered[2] > 0, answered
    for version in (1, 2):
        stats = statistics(srv.address, "swapped", str(version))
        assert stats.rows == rows_by[version] and stats.failed == 0, (version, stats)


# ---- 2. failures, deadlines ---------------------------------------------------------


def test_a_failing_request_fails_alone_in_its_batch(shared: Shared, clients: Clients) -> None:
    """buggy_model (slow, batching) fails any run holding a row with x[:, 0] > 0.
    Once waves of good requests have shown it batches, each wave holds one bad
    request among good ones: the bad one gets INTERNAL, every good one its right
    answer, in every wave (until good requests are seen retried alone after sharing
    a failing batch); exactly the bad ones count as failures; the server keeps
    serving."""
    srv, ref, rng = shared.server, shared.refs["buggy"], np.random.default_rng(4)

    def good(n: int, i: int) -> Request:
        return Request("buggy", -np.abs(_rows(rng, 1 + i % 2)), f"b{n}-{i}")

    def check(request: Request, answer: Any) -> None:
        ref.check(answer, request.x, 1, request.id)

    def retried() -> int:
        """Rows of good requests answered outside batch_stats: those that shared a
        failing batch and ran again alone."""
        stats = statistics(srv.address, "buggy", "1")
        return stats.rows - sum(size * runs for size, runs in stats.batches.items())

    waves_until_batched(clients, good, check,
                        lambda: statistics(srv.address, "buggy", "1").largest > 1)
    assert retried() == 0
    waves = 0
    while waves < 6 or not retried():
        assert waves < MAX_WAVES, f"no bad request shared a batch in {MAX_WAVES} waves"
        requests = [good(100 + waves, i) for i in range(WAVE)]
        bad = requests[int(rng.integers(WAVE))]
        bad.x[0, 0] = 0.5 + abs(bad.x[0, 0])
        for request, answer in zip(requests, clients.wave(requests), strict=True):
            if request is bad:
                assert isinstance(answer, InferenceServerException), (waves, request.id)
                assert answer.status() == "StatusCode.INTERNAL", (waves, answer)
            else:
                check(request, answer)
        waves += 1
    assert statistics(srv.address, "buggy", "1").failed == waves
    requests = [good(200, i) for i in range(WAVE)]
    for request, answer in zip(requests, clients.wave(requests), strict=True):
        check(request, answer)


def test_queued_requests_past_their_deadline_or_cancelled_never_run(shared: Shared) -> None:
    """A 4096-row request runs as one batch. Behind it, two queued requests are
    cancelled by their client (CANCELLED, and the server lets go of them) and four
    batch-1 requests with a short client deadline get DEADLINE_EXCEEDED; none of
    them ever runs. The long request and those after it are answered correctly."""
    srv, ref, rng = shared.server, shared.refs["deadline"], np.random.default_rng(5)
    stub = control_stub(srv.control_address)
    long_x = _rows(rng, 4096)
    short = [client(srv.address) for _ in range(6)]
    for c in short:
        assert c.is_server_live()  # connected: the deadline is spent in the queue
    before = statistics(srv.address, "deadline", "1")

    def expired(c: tc.InferenceServerClient) -> str:
        try:
            c.infer("deadline", [infer_input("INPUT0", _rows(rng), "FP32")],
                    client_timeout=0.2)
        except InferenceServerException as exc:
            return str(exc.status())
        return "OK"

    cancelled: queue.Queue[tuple[Any, Any]] = queue.Queue()
    pool = Clients(srv.address)
    try:
        long_call = pool.pool.submit(pool.send, Request("deadline", long_x, "long",
                                                        timeout=120))
        wait_until(lambda: inflight(stub, "deadline", 1) >= 1,
                   what="the long request in flight")
        calls = [c.async_infer("deadline", [infer_input("INPUT0", _rows(rng), "FP32")],
                               lambda result, error: cancelled.put((result, error)))
                 for c in short[4:]]
        wait_until(lambda: inflight(stub, "deadline", 1) >= 3,
                   what="two requests queued behind the long one")
        for call in calls:
            call.cancel()
        outcomes = [cancelled.get(timeout=30) for _ in calls]
        assert all(r is None and e.status() == "StatusCode.CANCELLED" for r, e in outcomes)
        wait_until(lambda: inflight(stub, "deadline", 1) == 1,
                   what="the server letting go of the cancelled requests")
        with ThreadPoolExecutor(4) as callers:
            codes = list(callers.map(expired, short[:4]))
        ref.check(long_call.result(timeout=120), long_x, 1, "long")
        assert codes == ["StatusCode.DEADLINE_EXCEEDED"] * 4, codes
        requests = [Request("deadline", _rows(rng, 2), f"after-{i}") for i in range(WAVE)]
        for request, answer in zip(requests, pool.wave(requests), strict=True):
            ref.check(answer, request.x, 1, request.id)
    finally:
        pool.close()
        for c in short:
            c.close()
    stats = statistics(srv.address, "deadline", "1")
    # only the long request and the wave after it ran: the others were dropped
    assert stats.rows - before.rows == len(long_x) + 2 * WAVE, (before, stats)
    assert stats.failed == before.failed, stats


# ---- 3. shutdown --------------------------------------------------------------------


def test_sigterm_answers_every_queued_request_and_exits_0(
        start_server: Any, tmp_path: Path) -> None:
    """A long batch runs while 16 more requests queue behind it; SIGTERM once all
    are accepted: every one of them gets its correct answer and the process exits 0."""
    repo = tmp_path / "repo"
    model = make_models.slow_model(1, layers=SLOW_LAYERS)
    make_models.write_model(model, repo, "slow", 1)
    (repo / "slow" / "sidecar.json").write_text(json.dumps(_batching(4096, 1000)))
    ref = Reference({1: model})
    srv = start_server(repo, "--grace-s", "60")
    rng = np.random.default_rng(6)
    requests = [Request("slow", _rows(rng, 2048), "long", timeout=120)] + [
        Request("slow", _rows(rng, 1 + i % 4), f"q{i}", timeout=120) for i in range(16)]
    pool = Clients(srv.address, len(requests))
    stub = control_stub(srv.control_address)
    done = [0]
    lock = threading.Lock()

    def send(request: Request) -> Any:
        try:
            return pool.send(request)
        finally:
            with lock:
                done[0] += 1

    try:
        futures = [pool.pool.submit(send, requests[0])]
        wait_until(lambda: inflight(stub, "slow", 1) >= 1,
                   what="the long request in flight")
        futures += [pool.pool.submit(send, r) for r in requests[1:]]

        def accepted() -> bool:
            finished = done[0]  # read before the in-flight count: never counts one twice
            return finished + inflight(stub, "slow", 1) >= len(requests)

        wait_until(accepted, what="every request accepted by the server")
        answered_before = done[0]
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("stopping", timeout=30)
        answers = [f.result(timeout=120) for f in futures]
    finally:
        pool.close()
    for request, answer in zip(requests, answers, strict=True):
        ref.check(answer, request.x, 1, request.id)
    # the queued requests cannot finish before the long batch: they were in flight
    assert answered_before < len(requests), answered_before
    assert srv.proc.wait(timeout=60) == 0, srv.proc.stderr
    assert any(r.get("event") == "stopped" for r in srv.log)


# ---- 4. settings --------------------------------------------------------------------


def _logged(srv: ServerProcess, event: str, **fields: Any) -> dict[str, Any]:
    """The first log record with this event and fields (waits for it, bounded)."""
    # Already read (maybe passed over by an earlier wait), else the next one to come:
    # a record is in `srv.log` or still queued for `wait_for`, never in neither.
    found = next((r for r in list(srv.log) if r.get("event") == event
                  and all(r.get(k) == v for k, v in fields.items())), None)
    return found if found is not None else srv.wait_for(event, timeout=30, **fields)


def _serves_unbatched(shared: Shared, clients: Clients, model: str, rows: int) -> None:
    """Two waves of concurrent requests are answered correctly, and no batch ran."""
    srv, ref, rng = shared.server, shared.refs[model], np.random.default_rng(7)
    for n in range(2):
        requests = [Request(model, _rows(rng, rows), f"{model}{n}-{i}") for i in range(WAVE)]
        for request, answer in zip(requests, clients.wave(requests), strict=True):
            ref.check(answer, request.x, 1, request.id)
    stats = statistics(srv.address, model, "1")
    assert stats.batches == {} and stats.runs == stats.rows // rows == 2 * WAVE, stats


def test_fixed_first_dimension_refuses_batching_and_serves_unbatched(
        shared: Shared, clients: Clients) -> None:
    """A model whose input has a fixed first dimension, with dynamic_batching in its
    sidecar.json: the server logs `dynamic batching refused` with the reason, and
    the model serves every request correctly, unbatched."""
    record = _logged(shared.server, "dynamic batching refused", model="fixed")
    assert record["version"] == 1
    assert "INPUT0" in record["reason"] and "fixed first dimension" in record["reason"], record
    _serves_unbatched(shared, clients, "fixed", 2)


@pytest.mark.parametrize(("model", "problem"), [
    ("badsize", "max_batch_size must be an integer from 0 to 4096, not -1"),
    ("badkey", "unknown key(s) max_delay_us"),
], ids=["negative-size", "unknown-key"])
def test_invalid_batching_setting_is_logged_and_the_model_serves_unbatched(
        shared: Shared, clients: Clients, model: str, problem: str) -> None:
    """An invalid dynamic_batching object is logged (event "model settings", with
    the problem) and the model serves unbatched, the server default included."""
    record = _logged(shared.server, "model settings", model=model)
    assert problem in record["problem"] and "dynamic batching is off" in record["problem"]
    _serves_unbatched(shared, clients, model, 1)


@pytest.mark.parametrize("flag", ["--max-batch-size", "--max-queue-delay-us"])
def test_negative_batching_flag_stops_the_start_naming_the_flag(
        tmp_path: Path, flag: str) -> None:
    """`sidecar serve --max-batch-size -1` (or --max-queue-delay-us -1) exits non-zero
    before serving, with a message naming the flag."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--model-repository", str(tmp_path),
         "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
         "--metrics-listen", "", "--state-dir", str(tmp_path / "state"), flag, "-1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert flag.removeprefix("--") in result.stderr and "-1" in result.stderr, result.stderr


# ---- 5. low load --------------------------------------------------------------------


def test_sequential_requests_never_form_a_batch(shared: Shared) -> None:
    """With batching on (the server default, --max-batch-size) and one request at
    a time, every run holds one request: batch_stats has only batch size 1, one
    run per request, and the answers are right."""
    srv, ref, rng = shared.server, shared.refs["lone"], np.random.default_rng(9)
    c = client(srv.address)
    try:
        for i in range(16):
            x = _rows(rng)
            answer = c.infer("lone", [infer_input("INPUT0", x, "FP32")], request_id=f"l{i}")
            ref.check(answer, x, 1, f"l{i}")
    finally:
        c.close()
    stats = statistics(srv.address, "lone", "1")
    assert stats.batches == {1: 16} and stats.rows == stats.runs == 16, stats
