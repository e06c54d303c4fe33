"""The one load generator: client worker processes sending ModelInfer calls.

Owns the client side of every benchmark. A `ClientPool` spawns its workers
once (spawn, not fork: the parent may hold onnxruntime threads) and reuses
them run after run. A run follows a `Plan` on the monotonic clock
(CLOCK_MONOTONIC: one clock for every process): a closed loop with N calls in
flight over the pool, or an open loop at a fixed rate (calls start on
schedule whether or not earlier ones returned). Each worker sends prebuilt
`ModelInferRequest`s (INPUT0 FP32, raw_input_contents) through tritonclient's
generated stubs on one grpc.aio channel, and records per call when it started
and ended and which version answered, or that it failed, or that its output
differs from the expected output of the version it names (rtol 1e-4, atol
1e-5: the servers may sum in another order than the reference). The scripts
cut windows from those `Samples` afterwards; `ClientPool.measure` cuts the
usual one: a warm-up, then a window with CPU readings.

One aio process with 16 calls in flight is the default load: measured on the
2-core machine, it spends 130-150 us of CPU a call and leaves the server the
rest; two processes cost more per call and took 10-25 % off both servers'
throughput; sync stubs in threads cost the same as aio (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from harness import machine, models
from harness.stats import Figures

CALL_TIMEOUT_S = 30.0
WORKER_TIMEOUT_S = 120.0
RTOL, ATOL = 1e-4, 1e-5
#: `Samples.version` of a call: > 0 the version that answered; otherwise one of these.
FAILED = 0  # the call failed (see Samples.errors)
WRONG = -1  # answered, but the output differs from that version's expected one

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Workload:
    """What each call sends (INPUT0 FP32) and what its answer must be."""

    model: str = "tiny"
    version: str = ""  # the version the calls name ("": the active one)
    rows: int = 1  # inputs FP32 [rows, 4]: ones, or random normal values (+ shift) ...
    random: bool = False
    shift: float = 0.0
    pool: int = 1024  # ... a pool of this many, different in each worker
    seed: int = 0
    data: F32 | None = None  # one given input instead
    expected: F32 | None = None  # its output, whatever version answers; None: tiny's
    data_pool: F32 | None = None  # or given inputs [n, rows, 4], the same in every worker,
    expected_pool: F32 | None = None  # and each one's output [n, rows, outputs]
    check: bool = True  # compare outputs with the expected ones (never for random inputs)

    def inputs(self, seed: int) -> list[F32]:
        if self.data_pool is not None:
            return list(self.data_pool)
        if self.data is not None:
            return [self.data]
        if not self.random:
            return [np.ones((self.rows, 4), dtype=np.float32)]
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((self.rows, 4), dtype=np.float32) + np.float32(self.shift)
                for _ in range(self.pool)]


@dataclass(frozen=True, slots=True)
class Plan:
    """One run of the workers, on the monotonic clock."""

    begin: float  # first call (after an unrecorded one that connects)
    end: float  # no call starts after this (or after the pool's stop event)
    in_flight: int = 1  # closed loop: calls in flight over the whole pool
    rate: float = 0.0  # > 0: open loop, calls/s over the whole pool (in_flight ignored)


@dataclass(slots=True)
class Samples:
    """Every call of a run: start and end times, and who answered (see FAILED, WRONG)."""

    started: F64
    done: F64
    version: I64
    errors: dict[str, int] = field(default_factory=dict)  # gRPC code -> count
    first_error: str = ""

    @staticmethod
    def merge(parts: Sequence[Samples]) -> Samples:
        """One run's samples from every worker, ordered by end time."""
        errors: dict[str, int] = {}
        for part in parts:
            for code, n in part.errors.items():
                errors[code] = errors.get(code, 0) + n

        def cat(name: str, dtype: Any) -> Any:
            return np.concatenate([np.zeros(0, dtype), *(getattr(p, name) for p in parts)])

        order = np.argsort(cat("done", np.float64), kind="stable")
        return Samples(cat("started", np.float64)[order], cat("done", np.float64)[order],
                       cat("version", np.int64)[order], errors,
                       next((p.first_error for p in parts if p.first_error), ""))

    def between(self, t0: float, t1: float) -> Samples:
        """The calls that ended in [t0, t1)."""
        keep = (self.done >= t0) & (self.done < t1)
        return Samples(self.started[keep], self.done[keep], self.version[keep],
                       self.errors, self.first_error)

    @property
    def count(self) -> int:
        return int(self.done.size)

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(self.version == FAILED))

    @property
    def wrong(self) -> int:
        return int(np.count_nonzero(self.version == WRONG))

    def latencies_ms(self) -> F64:
        """Latency of the calls that succeeded, in ms."""
        ok = self.version > 0
        return np.asarray((self.done[ok] - self.started[ok]) * 1e3, dtype=np.float64)

    def by_version(self) -> dict[int, int]:
        values, counts = np.unique(self.version, return_counts=True)
        return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float
    figures: Figures  # of the calls that ended in [start, end)
    samples: Samples  # every call of the run, the warm-up's too
    during: Any = None  # what `measure`'s `during` returned


class ClientPool:
    """Worker processes (spawned once, reused run after run) sending `workload`'s calls."""

    def __init__(self, workload: Workload, processes: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self._procs, self._conns = spawn_workers(
            ctx, _worker_main, processes,
            lambda k: (workload, workload.seed * 1000 + k, self.stop_event))

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def start(self, address: str, plan: Plan) -> None:
        """Hand every worker its share of the run; `collect` waits for its end."""
        self.stop_event.clear()
        n = len(self._conns)
        for k, conn in enumerate(self._conns):
            share = plan.in_flight // n + (1 if k < plan.in_flight % n else 0)
            conn.send((address, replace(plan, in_flight=share, rate=plan.rate / n)))

    def collect(self, timeout: float = WORKER_TIMEOUT_S) -> Samples:
        parts = []
        for conn in self._conns:
            reply = recv_worker(conn, timeout)
            if isinstance(reply, str):
                raise RuntimeError(f"client worker failed:\n{reply}")
            started, done, version = array("d"), array("d"), array("q")
            columns: tuple[array[Any], ...] = (started, done, version)
            for values, raw in zip(columns, reply[:3], strict=True):
                values.frombytes(raw)
            parts.append(Samples(np.array(started, dtype=np.float64),
                                 np.array(done, dtype=np.float64),
                                 np.array(version, dtype=np.int64), reply[3], reply[4]))
        return Samples.merge(parts)

    def run(self, address: str, plan: Plan) -> Samples:
        self.start(address, plan)
        return self.collect(timeout=max(0.0, plan.end - time.monotonic()) + WORKER_TIMEOUT_S)

    def measure(self, server: Any, warmup: float, duration: float, *, in_flight: int = 16,
                during: Callable[[float, float], Any] | None = None) -> Window:
        """Load on `server` (a server.Server): `warmup` s, then a `duration` s window
        read with CpuMeter (server, clients, this process; and the rest), in which
        `during(start, end)` runs if given."""
        begin = time.monotonic() + 0.2
        t0 = begin + warmup
        t1 = t0 + duration
        self.start(server.address, Plan(begin, t1, in_flight=in_flight))
        time.sleep(max(0.0, t0 - time.monotonic()))
        meter = machine.CpuMeter([server.pid, *self.pids, os.getpid()])
        extra = during(t0, t1) if during else None
        time.sleep(max(0.0, t1 - time.monotonic()))
        span = meter.stop()
        rss = server.rss_mb()
        samples = self.collect()
        return Window(t0, t1, Figures.of(samples, t0, t1, server_cpu_s=span.of(server.pid),
                                         client_cpu_s=span.of(*self.pids),
                                         others_cores=span.others_cores, rss_mb=rss),
                      samples, extra)

    def close(self) -> None:
        close_workers(self._conns, self._procs)


def spawn_workers(ctx: Any, target: Callable[..., None], count: int,
                  args: Callable[[int], tuple[Any, ...]], what: str = "client worker"
                  ) -> tuple[list[Any], list[Connection]]:
    """Start `count` worker processes `target(conn, *args(k))`; each says "ready"
    once it can take work. Returns the processes and the parent ends of the pipes."""
    procs: list[Any] = []
    conns: list[Connection] = []
    for k in range(count):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, daemon=True, args=(child, *args(k)))
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    for conn in conns:
        if (reply := recv_worker(conn, WORKER_TIMEOUT_S, what)) != "ready":
            raise RuntimeError(f"{what} failed to start:\n{reply}")
    return procs, conns


def close_workers(conns: Sequence[Connection], procs: Sequence[Any]) -> None:
    """Tell worker processes to end (None), wait a little, kill the stubborn."""
    for conn in conns:
        try:
            conn.send(None)
        except OSError:
            pass
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


def recv_worker(conn: Connection, timeout: float, what: str = "client worker") -> Any:
    """A worker's next message; RuntimeError if it is silent or died."""
    if not conn.poll(timeout):
        raise RuntimeError(f"{what} silent for {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{what} died") from None



# ---- inside a worker process -----------------------------------------------------------


class _Recorder:
    """Per-call records of one run, each answer checked against its version's output."""

    def __init__(self, workload: Workload, inputs: list[F32]) -> None:
        self.started, self.done, self.version = array("d"), array("d"), array("q")
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self._workload = workload
        self._inputs = inputs
        self._seen: dict[int, bytes] = {}  # version -> a verified output (one input only)

    def ok(self, started: float, index: int, response: Any) -> None:
        done = time.monotonic()
        try:
            version = int(response.model_version)
        except ValueError:
            version = WRONG
        if self._workload.check and version > 0 and not self._right(version, index, response):
            version = WRONG
        self._add(started, done, version)

    def _right(self, version: int, index: int, response: Any) -> bool:
        raw = response.raw_output_contents[0]
        if self._seen.get(version) == raw:
            return True
        pool = self._workload.expected_pool
        want = pool[index] if pool is not None else self._workload.expected
        if want is None:
            w, b = models.tiny_weights(version)
            want = self._inputs[index] @ w + b
        got = np.frombuffer(raw, dtype=np.float32)
        if got.size != want.size or not np.allclose(got, want.ravel(), rtol=RTOL, atol=ATOL):
            return False
        if len(self._inputs) == 1:
            self._seen[version] = raw
        return True

    def failed(self, started: float, code: str, message: str) -> None:
        self._add(started, time.monotonic(), FAILED)
        self.errors[code] = self.errors.get(code, 0) + 1
        self.first_error = self.first_error or f"{code}: {message}"

    def _add(self, started: float, done: float, version: int) -> None:
        self.started.append(started)
        self.done.append(done)
        self.version.append(version)

    def packed(self) -> tuple[bytes, bytes, bytes, dict[str, int], str]:
        return (self.started.tobytes(), self.done.tobytes(), self.version.tobytes(),
                self.errors, self.first_error)


def _worker_main(conn: Connection, workload: Workload, seed: int, stop: Any) -> None:
    """Entry point of a worker: build the requests, then run plan after plan."""
    from tritonclient.grpc import service_pb2 as ipb

    try:
        inputs = workload.inputs(seed)
        requests = []
        for x in inputs:
            request = ipb.ModelInferRequest(model_name=workload.model,
                                            model_version=workload.version)
            request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
            request.raw_input_contents.append(x.tobytes())
            requests.append(request)
        conn.send("ready")
        while (job := conn.recv()) is not None:
            recorder = _Recorder(workload, inputs)
            address, plan = job
            asyncio.run(_run(address, plan, requests, recorder, stop))
            conn.send(recorder.packed())
    except Exception:
        conn.send(traceback.format_exc())
    finally:
        conn.close()


async def _run(address: str, plan: Plan, requests: list[Any], recorder: _Recorder,
               stop: Any) -> None:
    from tritonclient.grpc import service_pb2_grpc as ipb_grpc

    big = 2**31 - 1
    options = [("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        try:
            await call(requests[0], timeout=CALL_TIMEOUT_S)  # connect; not recorded
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(max(0.0, plan.begin - time.monotonic()))
        running = _Running(plan, stop)

        async def one(index: int) -> None:
            started = time.monotonic()
            try:
                response = await call(requests[index], timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                recorder.failed(started, exc.code().name, exc.details() or "")
                return
            recorder.ok(started, index, response)

        if plan.rate > 0:
            await _open_loop(one, len(requests), plan, running)
        else:
            await asyncio.gather(*(_closed_loop(one, len(requests), k, plan.in_flight, running)
                                   for k in range(plan.in_flight)))


class _Running:
    """False once the plan ends or the pool's stop event is set (read every 5 ms)."""

    def __init__(self, plan: Plan, stop: Any) -> None:
        self._end, self._stop = plan.end, stop
        self._checked = 0.0
        self._stopped = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._end or self._stopped:
            return False
        if now - self._checked > 0.005:
            self._checked = now
            self._stopped = bool(self._stop.is_set())
        return not self._stopped


async def _closed_loop(one: Callable[[int], Any], n: int, k: int, stride: int,
                       running: _Running) -> None:
    """Loop k of `stride` sends inputs k, k + stride, ...: together the loops walk the
    pool in order, so any stretch of calls sees the pool's mix of inputs."""
    i = k
    while running():
        await one(i % n)
        i += stride


async def _open_loop(one: Callable[[int], Any], n: int, plan: Plan, running: _Running) -> None:
    """Calls started on a fixed schedule, whether or not earlier ones returned."""
    pending: set[asyncio.Task[None]] = set()
    i = 0
    due = plan.begin
    while running():
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            continue
        task = asyncio.create_task(one(i % n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        due += 1.0 / plan.rate
    if pending:
        await asyncio.gather(*pending)
