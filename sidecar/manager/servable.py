"""One loaded session of a version: what a request needs, and who holds it.

`ModelManager.acquire` hands a request a `Servable`; it carries everything the
request path needs (signature, runner, statistics, the guard's observer), so
nothing below the handlers is looked up again by name. The in-flight count
lives here, per session, not on the version: a version activated again while
its old session drains gets a new `Servable`, and each session's drain ends
when *its* requests are done. Any number of waiters may wait for a drain.

All mutation happens on the event loop thread, so counters need no lock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.loader.onnx import LoadedModel
from sidecar.manager.latency import LatencyHistogram

if TYPE_CHECKING:
    from sidecar.manager.version import ModelVersion


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class VersionStats:
    """Cumulative since load, Triton's statistics vocabulary.

    `fail` counts server-side failures only (the model raised); requests
    refused for bad input never reach the model and are not counted. `queue`
    is the wait for an inference thread (0 for inline runs), `compute_input`
    the decoding of the request's tensors, `compute_output` the encoding of
    the answer.
    """

    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    inference_count: int = 0  # batch elements inferred
    execution_count: int = 0  # model runs (a dynamic batch is one run)
    #: perf_counter_ns of the last inference (0: none yet); see `last_inference_ms`
    last_ns: int = 0
    #: Compute time per input element, exponentially weighted: times a request's
    #: element count, it predicts the request's compute (inline vs pool).
    ns_per_element: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Dynamic batches by size (rows): how many ran, and their compute time.
    batches: dict[int, Duration] = field(default_factory=dict)
    #: Successes, and the sums of their durations: each one adds to all four
    #: (plain counters on the request path; read as Durations below).
    successes: int = 0
    success_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0

    @property
    def success(self) -> Duration:
        return Duration(self.successes, self.success_ns)

    @property
    def compute_input(self) -> Duration:
        return Duration(self.successes, self.input_ns)

    @property
    def compute_infer(self) -> Duration:
        return Duration(self.successes, self.infer_ns)

    @property
    def compute_output(self) -> Duration:
        return Duration(self.successes, self.output_ns)

    def record_success(self, total_ns: int, infer_ns: int, batch: int, elements: int = 1,
                       input_ns: int = 0, output_ns: int = 0, queue_ns: int = 0,
                       executions: int = 1, end_ns: int = 0) -> None:
        """One answered request: `total_ns` from its arrival to its encoded answer.
        `executions` 0: it ran in a dynamic batch, which counts its own run."""
        self.successes += 1
        self.success_ns += total_ns
        self.input_ns += input_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.latency.record(total_ns)
        if queue_ns:
            self.queue.count += 1
            self.queue.ns += queue_ns
        self.inference_count += batch
        self.last_ns = end_ns or time.perf_counter_ns()
        if executions:
            self.execution_count += executions
            self.ns_per_element += (infer_ns / (elements or 1) - self.ns_per_element) * 0.05

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.latency.record(total_ns)
        self.execution_count += 1
        self.last_ns = time.perf_counter_ns()

    @property
    def last_inference_ms(self) -> int:
        """When the last inference ended, in ms since the epoch (0: none yet)."""
        if not self.last_ns:
            return 0
        return (time.time_ns() - time.perf_counter_ns() + self.last_ns) // 1_000_000


class Observer(Protocol):
    """Told every server-side outcome of a session (the guard's, while it watches)."""

    def observe(self, ok: bool, latency_ns: int) -> None: ...


class Servable:
    __slots__ = (
        "_waiters",
        "batcher",
        "batching_note",
        "closed",
        "inflight",
        "loaded",
        "model",
        "number",
        "observer",
        "plans",
        "runner",
        "signature",
        "stats",
        "version",
        "version_text",
    )

    def __init__(self, version: ModelVersion, loaded: LoadedModel) -> None:
        self.version = version
        self.model = version.model
        self.number = version.number
        self.version_text = str(version.number)
        self.loaded = loaded
        self.signature = loaded.signature
        self.runner = loaded.runner
        self.stats = VersionStats(ns_per_element=loaded.warmup_ns / loaded.warmup_elements)
        #: None: nobody watches this session's outcomes, and recording costs nothing.
        self.observer: Observer | None = None
        #: Request layouts already checked against the signature (see the data plane).
        self.plans: dict[Any, Any] = {}
        #: The dynamic batcher of this session, when its model batches; else why not
        #: if the model asked to ("" otherwise).
        self.batcher: Any = None
        self.batching_note = ""
        self.inflight = 0
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def label(self) -> str:
        return self.version.label

    @property
    def digest(self) -> str:
        return self.loaded.identity.digest

    def release(self) -> None:
        """Give back a handle taken by `ModelManager.acquire`."""
        self.inflight -= 1
        if self.inflight == 0 and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def drained(self, within: float | None = None) -> bool:
        """Wait until no request holds this session; False if `within` seconds passed first."""
        if self.inflight == 0:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def close(self) -> None:
        """Free the session (after it drained, or at the end of shutdown)."""
        self.closed = True
        self.runner.close()
