"""Small client-side helpers shared by the tests (tritonclient only)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException


def client(address: str, **kwargs: Any) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(address, **kwargs)


def infer_input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def tiny_expected(x: np.ndarray, version: int) -> np.ndarray:
    import make_models

    w, b = make_models.tiny_weights(version)
    return x @ w + b


def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, tensors: list[tuple[str, str, np.ndarray]], **kw: Any
                ) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw contents, built by hand (bypasses tritonclient)."""
    request = pb.ModelInferRequest(model_name=model, **kw)
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def status_of(call: Any) -> tuple[str, str]:
    """Run a callable expected to fail; return its gRPC status name and message."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), exc.message()
    raise AssertionError("the call succeeded but should have failed")


def hammer(address: str, stop: Any, served: Any, seed: int, threads: int = 4,
           models: tuple[str, ...] = ("tiny",), started: Any = None) -> dict[str, int]:
    """Client-process body: `threads` clients send requests to `models` (each made
    of tiny_model versions) until `stop` is set.

    Each answer is checked against the weights of the version it names. Returns
    counts: ok, failed, wrong (output does not match its version), per version;
    the first failure's message is under "first_error" (as a count of 1).
    """
    import threading

    import make_models

    weights = {v: make_models.tiny_weights(v) for v in range(1, 16)}
    totals: dict[str, int] = {"ok": 0, "failed": 0, "wrong": 0}
    lock = threading.Lock()

    def run(k: int) -> None:
        c = client(address)
        rng = np.random.default_rng(seed * 100 + k)
        counts: dict[str, int] = {"ok": 0, "failed": 0, "wrong": 0}
        told = False
        while not stop.is_set():
            x = rng.standard_normal((2, 4)).astype(np.float32)
            model = models[int(rng.integers(len(models)))]
            try:
                result = c.infer(model, [infer_input("INPUT0", x, "FP32")])
            except InferenceServerException as exc:
                counts["failed"] += 1
                counts.setdefault(f"first_error: {model}: {exc.message()}", 1)
                continue
            version = int(result.get_response().model_version)
            w, b = weights[version]
            good = np.allclose(result.as_numpy("OUTPUT0"), x @ w + b, rtol=1e-4, atol=1e-5)
            counts["ok" if good else "wrong"] += 1
            counts[f"v{version}"] = counts.get(f"v{version}", 0) + 1
            with served.get_lock():
                served.value += 1
            if started is not None and not told:
                started.set()  # once per thread: set() takes a lock shared by processes
                told = True
        c.close()
        with lock:
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return totals


def control_stub(address: str) -> Any:
    """A ModelControl stub (the control proto's package does not clash with tritonclient)."""
    from sidecar.rpc.proto import control_pb2_grpc

    return control_pb2_grpc.ModelControlStub(grpc.insecure_channel(address))


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a condition that no event announces, with a deadline.

    For state a test can only ask for: requests in flight on a version (the
    server has no event per request, and one on the hot path would cost every
    client), what another replica of a fleet reports, a file another process
    writes, an answer on a channel that reconnects. A condition that the server
    logs or publishes as an event is waited for on that event instead
    (ServerProcess.wait_for, EventStream)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def hammer_process(address: str, stop: Any, served: Any, seed: int, results: Any,
                   models: tuple[str, ...], started: Any) -> None:
    """Entry point of a client process: run `hammer` and report its counts."""
    results.put(hammer(address, stop, served, seed, models=models, started=started))


def start_hammers(address: str, processes: int, models: tuple[str, ...] = ("tiny",)
                  ) -> tuple[Any, Any, Any, list[Any]]:
    """Start client processes hammering `models` and wait for each one's first answer;
    returns (stop, served, results, procs)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stop, served, results = ctx.Event(), ctx.Value("i", 0), ctx.Queue()
    # One event per process, each set by its first answer. Waiting for all of them
    # also means every child has unpickled its arguments before this returns and
    # drops the events (a child cannot rebuild a semaphore its parent freed).
    started = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=hammer_process,
                         args=(address, stop, served, seed, results, models, started[seed]))
             for seed in range(processes)]
    for proc in procs:
        proc.start()
    if not all(event.wait(60) for event in started):
        stop.set()
        raise AssertionError("a client process got no answer within 60 s")
    return stop, served, results, procs


def stop_hammers(stop: Any, results: Any, procs: list[Any]) -> dict[str, int]:
    stop.set()
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    keys = {k for r in reports for k in r}
    return {k: sum(r.get(k, 0) for r in reports) for k in keys}


class EventStream:
    """Follows the server's WatchEvents in a thread; tests wait on what arrives."""

    def __init__(self, control_address: str) -> None:
        import threading

        from sidecar.rpc.proto import control_pb2

        self.events: list[Any] = []
        self._cond = threading.Condition()
        self._channel = grpc.insecure_channel(control_address)
        stub = control_stub_for(self._channel)
        self._call = stub.WatchEvents(control_pb2.WatchEventsRequest())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except grpc.RpcError:
            pass  # cancelled at close, or the server stopped

    def wait_for(self, timeout: float = 30.0, after: int = 0, **fields: Any) -> Any:
        """The first event (from the start, or after sequence number `after`) whose
        fields match; waits for it."""
        def match(e: Any) -> bool:
            def field(k: str) -> Any:
                if k in ("to", "from"):
                    return (e.to_version if k == "to" else e.from_version).number
                return getattr(e, k)
            return e.seq > after and all(field(k) == v for k, v in fields.items())

        with self._cond:
            found = self._cond.wait_for(lambda: next(filter(match, self.events), None),
                                        timeout)
        if found is None:
            seen = [(e.model, e.action, e.to_version.number, e.reason) for e in self.events]
            raise AssertionError(f"no event {fields} within {timeout}s; saw {seen}")
        return found

    def of(self, model: str) -> list[Any]:
        with self._cond:
            return [e for e in self.events if e.model == model]

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def control_stub_for(channel: grpc.Channel) -> Any:
    from sidecar.rpc.proto import control_pb2_grpc

    return control_pb2_grpc.ModelControlStub(channel)
