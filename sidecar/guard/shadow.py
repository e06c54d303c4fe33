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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


#: (the shadow's session, the guard's watch of this run, inputs, outputs asked,
#: what the active version answered)
_Copy = tuple[Servable, object, Mapping[str, np.ndarray], list[str], list[np.ndarray]]


class ShadowMirror:
    def __init__(self, manager: ModelManager, guard: Guard) -> None:
        self._manager = manager
        self._guard = guard
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue()
        self._waiting: dict[str, int] = {}  # model -> copies queued
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.counts: dict[str, ShadowCounts] = {}
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
        self._queue.put_nowait((servable, servable.observer, feeds, names, outputs))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="shadow")

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            self._waiting[copy[0].model] -= 1
            try:
                await self._compare(*copy)
            except Exception:  # one bad copy must never end the only worker
                log.exception("shadow comparison failed", extra={"model": copy[0].model})

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
        if m.entry(shadow.model).pinned:
            return  # nothing automatic on a pinned model (the counts go on)
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
