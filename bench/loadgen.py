"""The load generator: client worker processes that keep N calls in flight.

This module owns the client side of a measured run. `start_clients` spawns the
worker processes early (they import grpc and build their request while the
server under test starts), `Clients.go` hands them the server's address and a
schedule on the shared monotonic clock (warm-up start, window start, window
end), and `Clients.collect` gathers what each worker saw.

Every worker sends one prebuilt `ModelInferRequest` (raw_input_contents) with
tritonclient's generated stubs, checks the first response against the expected
output (shape, dtype, values) and every later one's output size, counts errors,
and records the latency of each call that completes inside the window.

Client design, chosen by measuring on the 2-core machine: ONE process running
all N calls as grpc.aio tasks on one channel. The server under test is bound by
its one event-loop thread (~1.1 cores with grpc's poller thread), so the client
must leave it the rest of the machine: one aio process spends ~130-150 us of CPU
per call (~0.7 core at 5,000 calls/s); two processes spent 160-190 us per call
and cut the servers' throughput by 10-25 %. Sync stubs in 16 threads cost the
same CPU per call as aio within noise; aio is kept because it needs no thread
per call in flight. `--client-procs` and `--client-mode sync` keep the
alternatives one flag away.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

#: Longest a single call may take before it counts as an error.
CALL_TIMEOUT_S = 30.0
#: Longest a worker may take to start, or to report after its window ends.
WORKER_TIMEOUT_S = 60.0
#: Floats compared with tolerance: the servers may run other thread counts
#: than the reference session, which changes summation order.
RTOL, ATOL = 1e-4, 1e-5

MODES = ("aio", "sync")


@dataclass(frozen=True, slots=True)
class Workload:
    """One request to send over and over, and what its answer must be."""

    model: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    payload: bytes
    output_name: str
    output_shape: tuple[int, ...]
    expected: bytes  # FP32 raw contents of the expected output


@dataclass(frozen=True, slots=True)
class Schedule:
    """Times on `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process)."""

    begin: float  # warm-up starts
    measure: float  # the window starts
    end: float  # the window ends; no call starts after it


@dataclass(slots=True)
class LoadResult:
    """What the clients saw in the window (errors: over the whole run)."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def add(self, other: LoadResult) -> None:
        self.latencies_s.extend(other.latencies_s)
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


class Clients:
    """Started worker processes, each waiting for its `go`."""

    def __init__(self, procs: list[Any], conns: list[Connection]) -> None:
        self._procs = procs
        self._conns = conns

    @property
    def pids(self) -> list[int]:
        return [int(proc.pid) for proc in self._procs]

    def wait_ready(self, timeout: float = WORKER_TIMEOUT_S) -> None:
        for conn in self._conns:
            message = _recv(conn, timeout, "start")
            if message != "ready":
                raise RuntimeError(f"client worker failed to start: {message}")

    def go(self, address: str, schedule: Schedule) -> None:
        for conn in self._conns:
            conn.send((address, schedule))

    def collect(self, timeout: float = WORKER_TIMEOUT_S) -> LoadResult:
        total = LoadResult()
        for conn in self._conns:
            message = _recv(conn, timeout, "report")
            if isinstance(message, str):
                raise RuntimeError(f"client worker failed: {message}")
            errors, first_error, raw = message
            latencies = array("d")
            latencies.frombytes(raw)
            total.add(LoadResult(latencies.tolist(), errors, first_error))
        self.close()
        return total

    def close(self) -> None:
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()


def _recv(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"client worker did not {what} within {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"client worker died before it could {what}") from None


def split(total: int, parts: int) -> list[int]:
    """`total` calls in flight spread as evenly as possible over `parts` workers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def start_clients(workload: Workload, *, processes: int, concurrency: int, mode: str) -> Clients:
    """Spawn the workers (spawn, not fork: the parent holds onnxruntime threads)."""
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    conns: list[Connection] = []
    for share in split(concurrency, processes):
        if share == 0:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child, workload, share, mode), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    return Clients(procs, conns)


# ---- inside a worker process ---------------------------------------------------------


def worker_main(conn: Connection, workload: Workload, in_flight: int, mode: str) -> None:
    """Entry point of a worker process: report ready, wait for `go`, run, report."""
    try:
        request = build_request(workload)
        conn.send("ready")
        address, schedule = conn.recv()
        runner = run_aio if mode == "aio" else run_sync
        result = runner(address, request, workload, schedule, in_flight)
        conn.send((result.errors, result.first_error, array("d", result.latencies_s).tobytes()))
    except Exception:
        conn.send(traceback.format_exc())
    finally:
        conn.close()


def build_request(workload: Workload) -> Any:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=workload.model)
    request.inputs.add(name=workload.input_name, datatype=workload.datatype, shape=workload.shape)
    request.raw_input_contents.append(workload.payload)
    return request


def check_first(response: Any, workload: Workload) -> None:
    """The first answer must be the right tensor with the right values."""
    import numpy as np

    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        raise AssertionError(f"expected one output, got {len(response.outputs)}")
    out = response.outputs[0]
    if (out.name, out.datatype, tuple(out.shape)) != (
        workload.output_name, "FP32", workload.output_shape,
    ):
        raise AssertionError(f"unexpected output {out.name} {out.datatype} {list(out.shape)}")
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    want = np.frombuffer(workload.expected, dtype=np.float32)
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        raise AssertionError("output values differ from the in-process reference")


def _delay_until(t: float) -> float:
    delay = t - time.monotonic()
    return max(0.0, delay)


class _Tally:
    """Latencies in the window and errors; `record` is called once per call."""

    def __init__(self, workload: Workload, schedule: Schedule) -> None:
        self.result = LoadResult()
        self._size = len(workload.expected)
        self._measure = schedule.measure
        self._end = schedule.end

    def record(self, started: float, response: Any) -> None:
        done = time.monotonic()
        if len(response.raw_output_contents[0]) != self._size:
            self.error("output size differs from the first response")
        elif self._measure <= done < self._end:
            self.result.latencies_s.append(done - started)

    def error(self, message: str) -> None:
        self.result.errors += 1
        self.result.first_error = self.result.first_error or message


def run_aio(
    address: str, request: Any, workload: Workload, schedule: Schedule, in_flight: int
) -> LoadResult:
    return asyncio.run(_aio_main(address, request, workload, schedule, in_flight))


async def _aio_main(
    address: str, request: Any, workload: Workload, schedule: Schedule, in_flight: int
) -> LoadResult:
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    tally = _Tally(workload, schedule)
    async with grpc.aio.insecure_channel(address, options=_channel_options()) as channel:
        call: Callable[..., Any] = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        check_first(await call(request, timeout=CALL_TIMEOUT_S), workload)
        await asyncio.sleep(_delay_until(schedule.begin))

        async def loop() -> None:
            while (started := time.monotonic()) < schedule.end:
                try:
                    response = await call(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    tally.error(f"{exc.code().name}: {exc.details()}")
                    continue
                tally.record(started, response)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return tally.result


def run_sync(
    address: str, request: Any, workload: Workload, schedule: Schedule, in_flight: int
) -> LoadResult:
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    tally = _Tally(workload, schedule)
    lock = threading.Lock()
    with grpc.insecure_channel(address, options=_channel_options()) as channel:
        call: Callable[..., Any] = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        check_first(call(request, timeout=CALL_TIMEOUT_S), workload)
        time.sleep(_delay_until(schedule.begin))

        def loop() -> None:
            while (started := time.monotonic()) < schedule.end:
                try:
                    response = call(request, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError as exc:
                    with lock:
                        tally.error(f"{exc.code().name}: {exc.details()}")
                    continue
                with lock:
                    tally.record(started, response)

        threads = [threading.Thread(target=loop) for _ in range(in_flight)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return tally.result


def _channel_options() -> list[tuple[str, int]]:
    big = 2**31 - 1
    return [("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)]
