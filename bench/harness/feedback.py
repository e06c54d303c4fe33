"""A load generator that gives every call a unique id and sends the truth for it.

Owns the client side of bench/quality.py. A `FeedbackPool` spawns worker
processes once (spawn, as clients.ClientPool) and reuses them run after run.
Each worker sends ModelInfer calls, each with a request id of its own
(`<worker>-<n>`: never repeated, so the sidecar remembers every answer as a new
id) and fresh input rows drawn N(0, 1), whose true class is the index of the
largest feature (`make_models.classifier_truth`): never a pool of inputs sent
again, on which two versions of equal accuracy would differ by chance. Calls go
in a closed loop (N in flight) or an open loop (started on a fixed schedule). With
`truth` on, a second task sends the truth of each answer once it is `truth_delay`
s old (so the warm previous version has answered the mirrored copy by then), in
batches through `sidecar.feedback.v1.Feedback/SendStream` every `stream_every`
s: an INT64 class per row, named after the output.

Workers use the sidecar's own generated stubs (inference and feedback): the
feedback stubs import the sidecar's `inference` messages, which tritonclient's
cannot share a process with (docs/design.md). Each call's bytes are a prebuilt
message head (model, input tensor) with the raw contents and the id fields
appended (protobuf fields may come in any order), which costs the client a few
microseconds, not a message built per call.

`Records` holds, per call, when it started and ended, the version that answered
(0: failed) and how many of its rows were right; per truth item, when it went
to its stream (streams that failed are left out) and the version that had
answered it; and the streams' summed summaries (received, matched, unmatched,
invalid, paired).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import traceback
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from harness.clients import close_workers, recv_worker, spawn_workers

CALL_TIMEOUT_S = 30.0
WORKER_TIMEOUT_S = 120.0
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
COUNTS = ("received", "matched", "unmatched", "invalid", "paired")


@dataclass(frozen=True, slots=True)
class FeedbackLoad:
    """What each worker sends."""

    model: str = "classifier"
    input: str = "INPUT0"
    output: str = "SCORES"  # the output the truth is for
    width: int = 4  # features per row
    rows: int = 1  # rows per call
    seed: int = 0
    truth: bool = True  # send the truth of each answer (else ids only)
    truth_delay: float = 0.2  # s from an answer to its truth
    stream_every: float = 0.05  # s between SendStream calls
    stream_max: int = 512  # items per SendStream call at most


@dataclass(frozen=True, slots=True)
class Run:
    """One run of the workers, on the monotonic clock (CLOCK_MONOTONIC)."""

    begin: float
    end: float  # no call starts after this (or the pool's stop event, or max_truths)
    in_flight: int = 16  # closed loop: calls in flight over the pool
    rate: float = 0.0  # > 0: open loop, calls/s over the pool
    max_truths: int = 0  # stop once this many truths were sent, over the pool (0: none)


@dataclass(slots=True)
class Records:
    started: F64
    done: F64
    version: I64  # 0: failed
    right: I64  # rows answered right
    truth_sent: F64  # when each truth item went to its stream (of streams that succeeded)
    truth_version: I64  # the version that answered it
    counts: dict[str, int] = field(default_factory=dict)  # summed stream summaries
    errors: dict[str, int] = field(default_factory=dict)  # gRPC code -> count
    first_error: str = ""

    @staticmethod
    def merge(parts: Sequence[Records]) -> Records:
        counts = {k: sum(p.counts.get(k, 0) for p in parts) for k in COUNTS}
        errors: dict[str, int] = {}
        for part in parts:
            for code, n in part.errors.items():
                errors[code] = errors.get(code, 0) + n

        def cat(name: str, dtype: Any) -> Any:
            return np.concatenate([np.zeros(0, dtype), *(getattr(p, name) for p in parts)])

        order = np.argsort(cat("done", np.float64), kind="stable")
        torder = np.argsort(cat("truth_sent", np.float64), kind="stable")
        return Records(cat("started", np.float64)[order], cat("done", np.float64)[order],
                       cat("version", np.int64)[order], cat("right", np.int64)[order],
                       cat("truth_sent", np.float64)[torder],
                       cat("truth_version", np.int64)[torder], counts, errors,
                       next((p.first_error for p in parts if p.first_error), ""))

    def calls_between(self, t0: float, t1: float) -> npt.NDArray[np.bool_]:
        """Mask of the calls that ended in [t0, t1)."""
        return np.asarray((self.done >= t0) & (self.done < t1))

    def truths_between(self, t0: float, t1: float, version: int = 0) -> int:
        """Truth items sent in [t0, t1) (for answers of `version`, if given)."""
        keep = (self.truth_sent >= t0) & (self.truth_sent < t1)
        if version:
            keep &= self.truth_version == version
        return int(np.count_nonzero(keep))

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(self.version == 0))


class FeedbackPool:
    """Worker processes (spawned once, reused run after run) sending `load`'s calls."""

    def __init__(self, load: FeedbackLoad, processes: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self._procs, self._conns = spawn_workers(
            ctx, _worker_main, processes,
            lambda k: (load, load.seed * 1000 + k, k, self.stop_event), "feedback worker")
        self.runs = 0

    def __enter__(self) -> FeedbackPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def start(self, address: str, run: Run) -> None:
        """Hand every worker its share of the run; `collect` waits for its end."""
        self.stop_event.clear()
        self.runs += 1
        n = len(self._conns)
        for k, conn in enumerate(self._conns):
            share = run.in_flight // n + (1 if k < run.in_flight % n else 0)
            truths = run.max_truths // n + (1 if k < run.max_truths % n else 0)
            conn.send((address, replace(run, in_flight=max(1, share), rate=run.rate / n,
                                        max_truths=truths), self.runs))

    def collect(self, timeout: float = WORKER_TIMEOUT_S) -> Records:
        parts = []
        for conn in self._conns:
            reply = recv_worker(conn, timeout, "feedback worker")
            if isinstance(reply, str):
                raise RuntimeError(f"feedback worker failed:\n{reply}")
            columns: list[array[Any]] = [array("d"), array("d"), array("q"), array("q"),
                                         array("d"), array("q")]
            for values, raw in zip(columns, reply[:6], strict=True):
                values.frombytes(raw)
            parts.append(Records(np.array(columns[0], dtype=np.float64),
                                 np.array(columns[1], dtype=np.float64),
                                 np.array(columns[2], dtype=np.int64),
                                 np.array(columns[3], dtype=np.int64),
                                 np.array(columns[4], dtype=np.float64),
                                 np.array(columns[5], dtype=np.int64),
                                 reply[6], reply[7], reply[8]))
        return Records.merge(parts)

    def close(self) -> None:
        close_workers(self._conns, self._procs)


# ---- inside a worker process -----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Worker:
    """One run's calls, truths and records, on one grpc.aio channel."""

    def __init__(self, load: FeedbackLoad, head: bytes, rng: np.random.Generator,
                 prefix: str, stop: Any) -> None:
        from sidecar.rpc.proto import feedback_pb2 as fpb
        from sidecar.rpc.proto import inference_pb2 as ipb

        self._fpb, self._ipb = fpb, ipb
        self.load = load
        self.head, self.rng = head, rng
        self.prefix = prefix
        self.stop = stop
        self.started, self.done = array("d"), array("d")
        self.version, self.right = array("q"), array("q")
        self.truth_sent, self.truth_version = array("d"), array("q")
        self.counts = dict.fromkeys(COUNTS, 0)
        self.errors: dict[str, int] = {}
        self.first_error = ""
        #: answers waiting for their truth: (due, id, true classes, version)
        self.queue: deque[tuple[float, str, I64, int]] = deque()
        self.sent = 0
        self.max_truths = 0
        self.n = 0
        self._checked = 0.0
        self._stopped = False

    def running(self, end: float) -> bool:
        """False once the run ends, the pool's stop event is set (read every 5 ms) or
        max_truths were sent."""
        now = time.monotonic()
        if now >= end or self._stopped:
            return False
        if now - self._checked > 0.005:
            self._checked = now
            self._stopped = bool(self.stop.is_set())
        return not (self._stopped or (self.max_truths and self.sent >= self.max_truths))

    def request(self) -> tuple[bytes, str, I64]:
        """A call's bytes (the head, then fields 7: raw_input_contents and 3: id), its
        id and its rows' true classes."""
        x = self.rng.standard_normal((self.load.rows, self.load.width), dtype=np.float32)
        raw = x.tobytes()
        request_id = f"{self.prefix}-{self.n}".encode()
        self.n += 1
        data = (self.head + b"\x3a" + _varint(len(raw)) + raw
                + b"\x1a" + _varint(len(request_id)) + request_id)
        return data, request_id.decode(), np.asarray(x.argmax(axis=1), dtype=np.int64)

    def answered(self, started: float, request_id: str, truth: I64, reply: bytes) -> None:
        done = time.monotonic()
        response = self._ipb.ModelInferResponse.FromString(reply)
        version = int(response.model_version or 0)
        right = 0
        names = [o.name for o in response.outputs]
        if self.load.output in names:
            raw = response.raw_output_contents[names.index(self.load.output)]
            scores = np.frombuffer(raw, dtype="<f4").reshape(self.load.rows, -1)
            if scores.shape[1] > 1:
                right = int(np.count_nonzero(scores.argmax(axis=1) == truth))
        self.started.append(started)
        self.done.append(done)
        self.version.append(version)
        self.right.append(right)
        if self.load.truth:
            self.queue.append((done + self.load.truth_delay, request_id, truth, version))

    def failed(self, started: float, code: str, message: str) -> None:
        self.started.append(started)
        self.done.append(time.monotonic())
        self.version.append(0)
        self.right.append(0)
        self.errors[code] = self.errors.get(code, 0) + 1
        self.first_error = self.first_error or f"{code}: {message}"

    def truth_message(self, request_id: str, truth: I64) -> Any:
        msg = self._fpb.FeedbackRequest(model_name=self.load.model, request_id=request_id)
        msg.truth.add(name=self.load.output, datatype="INT64", shape=[int(truth.shape[0])])
        msg.raw_truth_contents.append(truth.astype("<i8").tobytes())
        return msg

    async def send_truths(self, stub: Any, end: float) -> None:
        """Every `stream_every` s, one SendStream with the items due; once the run
        ends, what is due by then, and stop (the rest never gets truth)."""
        every, most = self.load.stream_every, self.load.stream_max
        while True:
            over = not self.running(end)
            now = time.monotonic()
            batch: list[tuple[float, str, I64, int]] = []
            while self.queue and self.queue[0][0] <= now and len(batch) < most:
                if self.max_truths and self.sent + len(batch) >= self.max_truths:
                    break
                batch.append(self.queue.popleft())
            if batch:
                items = [self.truth_message(rid, truth) for _, rid, truth, _ in batch]
                handed: list[float] = []  # when each item went to the stream

                async def stream(items: list[Any] = items, handed: list[float] = handed
                                 ) -> AsyncIterator[Any]:
                    for item in items:
                        handed.append(time.monotonic())
                        yield item

                try:
                    summary = await stub.SendStream(stream(), timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    code = f"feedback {exc.code().name}"
                    self.errors[code] = self.errors.get(code, 0) + 1
                    self.first_error = self.first_error or f"{code}: {exc.details()}"
                else:
                    for key in COUNTS:
                        self.counts[key] += int(getattr(summary, key))
                    if summary.errors and not self.first_error:
                        self.first_error = f"invalid truth: {summary.errors[0].reason}"
                    for (_, _, _, version), at in zip(batch, handed, strict=True):
                        self.truth_sent.append(at)
                        self.truth_version.append(version)
                    self.sent += len(batch)
            if over:
                return
            if len(batch) < most:
                await asyncio.sleep(every)

    def packed(self) -> tuple[Any, ...]:
        return (self.started.tobytes(), self.done.tobytes(), self.version.tobytes(),
                self.right.tobytes(), self.truth_sent.tobytes(), self.truth_version.tobytes(),
                self.counts, self.errors, self.first_error)


def _worker_main(conn: Connection, load: FeedbackLoad, seed: int, number: int,
                 stop: Any) -> None:
    """Entry point of a worker: build the message head, then run after run."""
    try:
        from sidecar.rpc.proto import inference_pb2 as ipb

        request = ipb.ModelInferRequest(model_name=load.model)
        request.inputs.add(name=load.input, datatype="FP32", shape=[load.rows, load.width])
        head = request.SerializeToString()
        rng = np.random.default_rng(seed)
        conn.send("ready")
        while (job := conn.recv()) is not None:
            address, run, runs = job
            worker = _Worker(load, head, rng, f"w{seed}-{number}-r{runs}", stop)
            worker.max_truths = run.max_truths
            asyncio.run(_run(address, run, worker))
            conn.send(worker.packed())
    except Exception:
        conn.send(traceback.format_exc())
    finally:
        conn.close()


async def _run(address: str, run: Run, worker: _Worker) -> None:
    from sidecar.rpc.proto import feedback_pb2_grpc as fpb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=None, response_deserializer=None)
        feedback = fpb_grpc.FeedbackStub(channel)
        size = worker.load.rows * worker.load.width
        try:  # connect; not recorded, and no id (nothing remembered)
            await infer(worker.head + b"\x3a" + _varint(4 * size)
                        + bytes(4 * size), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(max(0.0, run.begin - time.monotonic()))

        async def one() -> None:
            data, request_id, truth = worker.request()
            started = time.monotonic()
            try:
                reply = await infer(data, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                worker.failed(started, exc.code().name, exc.details() or "")
                return
            worker.answered(started, request_id, truth, reply)

        tasks = [_open_loop(one, run, worker) if run.rate > 0 else
                 _closed_loops(one, run, worker)]
        if worker.load.truth:
            tasks.append(worker.send_truths(feedback, run.end))
        await asyncio.gather(*tasks)


async def _closed_loops(one: Callable[[], Any], run: Run, worker: _Worker) -> None:
    async def loop() -> None:
        while worker.running(run.end):
            await one()

    await asyncio.gather(*(loop() for _ in range(run.in_flight)))


async def _open_loop(one: Callable[[], Any], run: Run, worker: _Worker) -> None:
    pending: set[asyncio.Task[None]] = set()
    due = run.begin
    while worker.running(run.end):
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(min(delay, 0.05))
            continue
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        due += 1.0 / run.rate
    if pending:
        await asyncio.gather(*pending)
