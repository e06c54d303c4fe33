"""Shadow traffic: copies of requests run on a candidate, off the request path.

The request path only offers a copy (`offer`, never awaits): when the model's
copies waiting reach its `shadow_queue` setting, the copy is dropped and
counted. One worker runs the candidate
in a thread of its own, compares its outputs with what the active version
answered, and records agreement in the candidate's window. Too much
disagreement rejects the candidate (abort, quarantine, event with the figures);
agreement over a span promotes it if the model's settings say so.

Two answers agree when, output by output, they have the same shape and are
within atol/rtol, or, for classifier-like outputs (floating point, last axis
longer than 1), pick the same top-1 class in every row.

The same worker runs the quality engine's paired copies (`offer_pair`): a
share of the active version's requests that carry an id, run on the warm
previous version, whose answer is handed to the engine for that id (so the
truth meets both versions' answers). They share the model's `shadow_queue`
bound; a copy that finds it full is dropped and counted (`pairs`). A copy
predicted to take less than the data plane's inline budget (--inline-max-us)
runs on the event loop, as such requests do: handing it to the thread would
cost several times its compute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from sidecar.errors import ModelExecutionError, SidecarError
from sidecar.guard.guard import ACTOR, Guard
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable

log = logging.getLogger("sidecar.shadow")


def agree(primary: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, atol: float,
          rtol: float) -> bool:
    if len(primary) != len(candidate):
        return False
    for a, b in zip(primary, candidate, strict=True):
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            return False
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                return False
            continue
        if np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
            continue
        classifier = a.ndim >= 1 and a.shape[-1] > 1
        if not classifier or not np.array_equal(a.argmax(axis=-1), b.argmax(axis=-1)):
            return False
    return True


@dataclass(slots=True)
class ShadowCounts:
    version: int = 0
    run: object = None  # the guard's window of this shadow run
    compared: int = 0
    disagreed: int = 0
    dropped: int = 0
    failed: int = 0
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class PairCounts:
    """One model's paired copies (for the quality engine) since start."""

    offered: int = 0  # copies queued
    dropped: int = 0  # the queue was full
    answered: int = 0  # the previous version answered; handed to the engine
    failed: int = 0  # the previous version failed, or could not take the request
    skipped: int = 0  # the previous version was gone by the time the copy ran


#: (model, the job the worker awaits)
_Job = tuple[str, Callable[[], Awaitable[None]]]
#: Told (model, request id, version, the output's array) for each paired answer.
PairAnswer = Callable[[str, str, int, np.ndarray], None]


class ShadowMirror:
    def __init__(self, manager: ModelManager, guard: Guard, *, inline_max_us: int = 1000
                 ) -> None:
        self._manager = manager
        self._guard = guard
        #: paired copies predicted shorter than this run on the loop (as the data
        #: plane's inline runs): a hand-off to the thread costs more than they do
        self._inline_max_ns = inline_max_us * 1000
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._waiting: dict[str, int] = {}  # model -> copies queued
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.counts: dict[str, ShadowCounts] = {}
        self.pairs: dict[str, PairCounts] = {}
        self._task: asyncio.Task[None] | None = None

    def counts_for(self, model: str, shadow: Servable) -> ShadowCounts:
        """The counts of the model's current shadow run (fresh for a new run)."""
        counts = self.counts.get(model)
        run = self._guard.window_of(shadow)
        if counts is None or counts.run is not run:
            counts = self.counts[model] = ShadowCounts(shadow.number, run)
        return counts

    def offer(self, model: str, feeds: Mapping[str, np.ndarray], names: list[str],
              outputs: list[np.ndarray]) -> None:
        """Queue a copy for the model's shadow, if it has one being judged; never waits."""
        shadow = self._manager.entry(model).serving.shadow
        servable = shadow.servable if shadow is not None else None
        if servable is None or self._guard.window_of(servable) is None:
            return
        waiting = self._waiting.get(model, 0)
        if waiting >= self._guard.model(model).settings.shadow_queue:
            self.counts_for(model, servable).dropped += 1
            return
        self._waiting[model] = waiting + 1
        self._queue.put_nowait((model, partial(self._compare, servable, servable.observer,
                                               feeds, names, outputs)))

    def offer_pair(self, previous: Servable, request_id: str,
                   feeds: Mapping[str, np.ndarray], output: str, answer: PairAnswer) -> None:
        """Queue a copy of an active version's request for the warm `previous`
        version; `answer` gets its `output` (on the event loop). Never waits: a
        full queue drops the copy (counted)."""
        model = previous.model
        counts = self.pairs.get(model)
        if counts is None:
            counts = self.pairs[model] = PairCounts()
        waiting = self._waiting.get(model, 0)
        if waiting >= self._guard.model(model).settings.shadow_queue:
            counts.dropped += 1
            return
        self._waiting[model] = waiting + 1
        counts.offered += 1
        self._queue.put_nowait((model, partial(self._pair, previous, request_id, feeds, output,
                                               answer, counts)))

    async def _pair(self, previous: Servable, request_id: str,
                    feeds: Mapping[str, np.ndarray], output: str, answer: PairAnswer,
                    counts: PairCounts) -> None:
        if previous.closed:
            counts.skipped += 1
            return
        signature = previous.signature
        if output not in signature.output_by_name or set(feeds) != set(signature.input_by_name):
            counts.failed += 1  # another signature: it cannot answer this request
            return
        previous.inflight += 1  # so an unload drains before closing it
        try:
            elements = sum(a.size for a in feeds.values()) or 1
            if previous.stats.ns_per_element * elements < self._inline_max_ns:
                (array,) = previous.runner.run(feeds, [output])
            else:
                (array,) = await asyncio.get_running_loop().run_in_executor(
                    self._pool, previous.runner.run, feeds, [output])
        except Exception:  # its failure, or a request its inputs do not fit
            counts.failed += 1
            return
        finally:
            previous.release()
        counts.answered += 1
        answer(previous.model, request_id, previous.number, array)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="shadow")

    async def _work(self) -> None:
        while True:
            model, job = await self._queue.get()
            self._waiting[model] -= 1
            try:
                await job()
            except Exception:  # one bad copy must never end the only worker
                log.exception("shadow comparison failed", extra={"model": model})
            finally:
                self._queue.task_done()

    async def idle(self) -> None:
        """Wait until every copy queued so far has run (tests, benchmarks)."""
        await self._queue.join()

    async def _compare(self, shadow: Servable, watch: object, feeds: Mapping[str, np.ndarray],
                       names: list[str], outputs: list[np.ndarray]) -> None:
        if shadow.closed or watch is None or shadow.observer is not watch:
            return  # aborted, promoted, or another run of the version since it was queued
        counts = self.counts_for(shadow.model, shadow)
        shadow.inflight += 1  # so an abort drains before closing it
        start = time.perf_counter_ns()
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._pool, shadow.runner.run, feeds, names)
            settings = self._guard.model(shadow.model).settings
            same = agree(outputs, answer, atol=settings.shadow_atol, rtol=settings.shadow_rtol)
        except ModelExecutionError:
            counts.failed += 1
            same = False
        finally:
            shadow.release()
        counts.compared += 1
        counts.disagreed += 0 if same else 1
        window = self._guard.window_of(shadow)
        if window is not None:
            window.record(time.monotonic(), same, time.perf_counter_ns() - start)
        try:
            await self._judge(shadow, counts)
        except SidecarError as exc:
            log.warning("shadow verdict not applied", extra={"reason": str(exc)})

    async def _judge(self, shadow: Servable, counts: ShadowCounts) -> None:
        window, m = self._guard.window_of(shadow), self._manager
        current = m.entry(shadow.model).serving.shadow
        if window is None or current is None or current.servable is not shadow:
            return
        settings = self._guard.model(shadow.model).settings
        stats = window.stats(time.monotonic())
        figures = {"compared": str(counts.compared), "disagreed": str(counts.disagreed),
                   "dropped": str(counts.dropped), "window_requests": str(stats.requests),
                   "disagreement": f"{stats.error_ratio:.3f}",
                   "max_disagreement": str(settings.shadow_max_disagreement)}
        if m.entry(shadow.model).pinned or settings.mode == "off":
            return  # nothing automatic on a pinned model, or in mode off (counts go on)
        watch = shadow.observer
        if (stats.requests >= settings.shadow_min_requests
                and stats.error_ratio > settings.shadow_max_disagreement):
            reason = (f"shadow disagrees on {stats.failures} of {stats.requests} requests"
                      f" ({stats.error_ratio:.1%} > {settings.shadow_max_disagreement:.1%})")
            shadow.observer = None  # one verdict
            try:
                await m.candidates.abort(shadow.model, actor=ACTOR, reason=reason,
                                         details=figures)
            except SidecarError:
                shadow.observer = watch  # refused: go on judging
                raise
            await m.quarantine_version(shadow.model, shadow.digest, actor=ACTOR, reason=reason)
        elif (settings.shadow_promote and window.total >= settings.canary_promote_requests
              and time.monotonic() - counts.since >= settings.canary_promote_s):
            shadow.observer = None
            try:
                await m.candidates.promote(shadow.model, actor=ACTOR,
                                           reason=f"shadow agrees: {figures['disagreement']}"
                                           " disagreement")
            except SidecarError:
                shadow.observer = watch
                raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
