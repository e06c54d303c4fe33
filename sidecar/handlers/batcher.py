"""Dynamic batching of one session: concurrent requests run as one model run.

A `Batcher` belongs to one `Servable` (one loaded session of one version), so a
batch never mixes versions, and a request queued on a session that is being
swapped out still runs on it: the session drains only when its queue is empty
(queued requests hold the session like any other request).

Requests whose inputs share every dimension but the first, and that ask for
the same outputs, queue together. The event loop decides when a queue runs;
the run itself (concatenate, `session.run`, split) happens in the inference
thread pool. The rule, Triton's with one change:

- a queue runs at once when it holds `max_batch_size` rows, or a preferred
  batch size, or when `max_queue_delay_microseconds` is 0;
- else it waits for more, up to the delay after its oldest request, *only while
  more requests are on their way to this session* (held but not queued yet, or
  still running): a lone request never waits, so batching costs nothing at
  low load;
- at most one batch of a queue runs at a time, unless a full one is ready
  (then up to `workers` run), so that batches grow while the model computes.

A failing batch is retried request by request, so a bad request fails alone.
A request whose client went away (cancelled) or whose deadline passed is
dropped before its batch runs. Every request's answer carries its own rows of
the outputs (views, no copy); the caller records its statistics, so the guard
and the counters see each request, its queueing included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.errors import DeadlineExceededError, ModelExecutionError
from sidecar.loader.onnx import Runner
from sidecar.manager.servable import Duration, Servable
from sidecar.source.batching import BatchingConfig, batch_refusal, read_batching

log = logging.getLogger("sidecar.batching")

#: (outputs, compute ns of the run that made them, ns the request waited)
Answer = tuple[list[np.ndarray], int, int]


@dataclass(slots=True)
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[Answer]
    queued_ns: int
    deadline_ns: int  # perf_counter_ns; 0: none
    answered: bool = False  # its future was resolved by `_finished`


@dataclass(slots=True)
class _Queue:
    names: list[str]
    items: deque[_Item] = field(default_factory=deque)
    rows: int = 0
    running: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(self, servable: Servable, config: BatchingConfig, executor: Executor,
                 workers: int) -> None:
        self._servable = servable
        self._runner: Runner = servable.runner
        self._executor = executor
        self._workers = max(1, workers)
        self.config = config
        self.max_rows = config.max_batch_size
        self._delay_ns = config.max_queue_delay_microseconds * 1000
        self._preferred = frozenset(config.preferred_batch_size)
        self._queues: dict[Any, _Queue] = {}
        self.queued = 0  # requests waiting in any queue
        self.running = 0  # requests in runs now
        self.answered = 0  # requests answered whose callers have not resumed yet

    # ---- the event loop's side ---------------------------------------------------

    async def submit(self, key: Any, names: list[str], feeds: dict[str, np.ndarray],
                     rows: int, time_left: Callable[[], float | None] | None) -> Answer:
        """Queue one request (`rows` along the batch dimension) under its batch key
        and wait for its rows of the outputs."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter_ns()
        left = time_left() if time_left is not None else None
        deadline = now + int(left * 1e9) if left is not None else 0
        item = _Item(feeds, rows, loop.create_future(), now, deadline)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(names)
        queue.items.append(item)
        queue.rows += rows
        self.queued += 1
        self._consider(key, queue)
        try:
            return await item.future
        finally:
            if item.answered:
                self.answered -= 1

    def _coming(self, queue: _Queue) -> bool:
        """Whether more requests are on their way to this session: held by a
        request that is neither queued, nor running, nor answered (an answered
        request holds the session until its caller resumes and lets go)."""
        return self._servable.inflight > self.queued + self.running + self.answered

    def _consider(self, key: Any, queue: _Queue) -> None:
        """Run the queue now, or arm its timer, or leave it to the running batch."""
        if not queue.items:
            if not queue.running and queue.timer is None:
                self._queues.pop(key, None)
            return
        full = queue.rows >= self.max_rows
        if queue.running:
            if not full or queue.running >= self._workers:
                return  # grows while the model computes; runs when the batch is back
        elif not (full or self._delay_ns == 0 or queue.rows in self._preferred
                  or not self._coming(queue)):
            if queue.timer is None:
                wait_ns = queue.items[0].queued_ns + self._delay_ns - time.perf_counter_ns()
                if wait_ns > 0:
                    queue.timer = asyncio.get_running_loop().call_later(
                        wait_ns / 1e9, self._expired, key, queue)
                    return
            else:
                return
        self._launch(key, queue)

    def _expired(self, key: Any, queue: _Queue) -> None:
        queue.timer = None
        if queue.items and not queue.running:
            self._launch(key, queue)

    def _take(self, queue: _Queue) -> list[_Item]:
        """The batch: queued requests in order, up to max_batch_size rows (a request
        larger than that alone); dropped are those whose caller is gone."""
        batch: list[_Item] = []
        rows = 0
        now = time.perf_counter_ns()
        items = queue.items
        while items:
            item = items[0]
            if batch and rows + item.rows > self.max_rows:
                break
            items.popleft()
            queue.rows -= item.rows
            self.queued -= 1
            if item.future.done():  # cancelled: the client went away
                continue
            if item.deadline_ns and now > item.deadline_ns:
                item.future.set_exception(DeadlineExceededError(
                    "the request's deadline passed while it waited for a batch"))
                continue
            batch.append(item)
            rows += item.rows
        return batch

    def _launch(self, key: Any, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        batch = self._take(queue)
        if not batch:
            self._consider(key, queue)
            return
        queue.running += 1
        self.running += len(batch)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._execute, batch, queue.names)
        work.add_done_callback(lambda done: self._finished(key, queue, batch, done))

    def _finished(self, key: Any, queue: _Queue, batch: list[_Item],
                  done: asyncio.Future[tuple[list[Any], int, int, int]]) -> None:
        queue.running -= 1
        self.running -= len(batch)
        try:
            answers, infer_ns, began, elements = done.result()
        except BaseException as exc:  # the pool refused the work (shut down): fail all
            answers = [ModelExecutionError(f"the batch could not run: {exc}")] * len(batch)
            infer_ns = began = elements = 0
        stats = self._servable.stats
        if elements:  # one run: counted here, once (its requests count their rows)
            stats.execution_count += 1
            stats.ns_per_element += (infer_ns / elements - stats.ns_per_element) * 0.05
            size = sum(item.rows for item in batch)
            sizes = stats.batches.get(size)
            if sizes is None:
                sizes = stats.batches[size] = Duration()
            sizes.add(infer_ns)
        else:  # request by request: each success a run (a failure counts its own)
            stats.execution_count += sum(not isinstance(a, BaseException) for a in answers)
        for item, answer in zip(batch, answers, strict=True):
            if item.future.done():
                continue
            item.answered = True
            self.answered += 1
            if isinstance(answer, BaseException):
                item.future.set_exception(answer)
            else:
                item.future.set_result((answer, infer_ns, max(0, began - item.queued_ns)))
        if queue.items:
            self._consider(key, queue)
        elif not queue.running and queue.timer is None:
            self._queues.pop(key, None)

    # ---- the pool's side -----------------------------------------------------------

    def _execute(self, batch: list[_Item], names: list[str]
                 ) -> tuple[list[Any], int, int, int]:
        """(per request: its outputs or its error; compute ns; when it began;
        input elements of the run, 0 if the batch ran request by request)."""
        began = time.perf_counter_ns()
        if len(batch) == 1:
            try:
                answer: Any = self._runner.run(batch[0].feeds, names)
            except ModelExecutionError as exc:
                return [exc], time.perf_counter_ns() - began, began, 0
            elements = sum(a.size for a in batch[0].feeds.values()) or 1
            return [answer], time.perf_counter_ns() - began, began, elements
        feeds = {name: np.concatenate([item.feeds[name] for item in batch])
                 for name in batch[0].feeds}
        total = sum(item.rows for item in batch)
        try:
            outputs = self._runner.run(feeds, names)
            if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
                raise ModelExecutionError("an output does not follow the batch dimension")
        except ModelExecutionError:
            return self._one_by_one(batch, names, began)
        infer_ns = time.perf_counter_ns() - began
        answers: list[Any] = []
        start = 0
        for item in batch:
            end = start + item.rows
            answers.append([o[start:end] for o in outputs])
            start = end
        return answers, infer_ns, began, sum(a.size for a in feeds.values()) or 1

    def _one_by_one(self, batch: Sequence[_Item], names: list[str], began: int
                    ) -> tuple[list[Any], int, int, int]:
        """The batch failed: each request alone, so only a bad one fails."""
        answers: list[Any] = []
        for item in batch:
            try:
                answers.append(self._runner.run(item.feeds, names))
            except ModelExecutionError as exc:
                answers.append(exc)
        return answers, time.perf_counter_ns() - began, began, 0


class BatcherFactory:
    """Gives each loaded session its batcher, or None: the model's settings
    (`read_batching`), checked against the version's signature. Called by the
    manager when a version is loaded; a refusal is logged with its reason and
    kept on the session (`batching_note`) for `ctl status` and ModelConfig."""

    def __init__(self, repository: Path, default: BatchingConfig | None, executor: Executor,
                 workers: int) -> None:
        self._repository = repository
        self._default = default
        self._executor = executor
        self._workers = workers

    def __call__(self, servable: Servable) -> Batcher | None:
        config, problem = read_batching(self._repository / servable.model, self._default)
        if problem:
            log.warning("model settings", extra={"model": servable.model, "problem": problem})
        if config is None:
            return None
        refusal = batch_refusal(servable.signature)
        if refusal:
            servable.batching_note = f"dynamic batching refused: {refusal}"
            log.warning("dynamic batching refused", extra={
                "model": servable.model, "version": servable.number, "reason": refusal})
            return None
        return Batcher(servable, config, self._executor, self._workers)
