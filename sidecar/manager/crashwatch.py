"""The crash-loop guard at run time: keeps the serving record and applies the rule.

At start `begin` judges the record the last run left (`crashloop.judge`) and
saves the new counts before anything loads, so a crash during loading is not
counted twice. A version about to serve (restored at start, or activated) is
recorded and fsynced *before* it can answer (`will_serve`, on the journal's I/O
thread, never on the request path); a rollback's target is recorded in the
background (it served before: its first answers are not new). Then
once a version has served `window_s` seconds it is marked as having survived
the window. A clean stop marks the record clean: it never counts as a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from sidecar.manager.crashloop import CrashVerdict, judge
from sidecar.manager.journal import Journal
from sidecar.state.record import RecordStore, Serving, ServingRecord

log = logging.getLogger("sidecar.crashloop")


class CrashWatch:
    def __init__(self, directory: Path | None, journal: Journal, *, window_s: float,
                 limit: int) -> None:
        self._store = RecordStore(directory) if directory is not None else None
        self._journal = journal
        self.window_s = window_s
        self.limit = limit
        self._record = ServingRecord()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.began = False

    async def begin(self) -> list[CrashVerdict]:
        """Judge how the last run ended; the versions to roll back and quarantine."""
        self.began = True
        if self._store is None:
            return []
        store = self._store
        judgement = judge(await self._journal.run(store.load), now=time.time(),
                          window_s=self.window_s, limit=self.limit)
        self._record = judgement.record
        await self._save()
        for verdict in judgement.verdicts:
            log.error("crash loop", extra={"model": verdict.model, "version": verdict.version,
                                           "digest": verdict.digest, "count": verdict.count,
                                           "reason": verdict.reason})
        return list(judgement.verdicts)

    async def _save(self) -> None:
        if self._store is not None:
            store, record = self._store, self._record
            try:
                await self._journal.run(lambda: store.save(record))
            except OSError as exc:  # serving matters more than this record
                log.error("serving record not saved",
                          extra={"reason": exc.strerror or str(exc)})

    async def will_serve(self, model: str, version: int, digest: str) -> None:
        """Record durably that `model` is about to serve these bytes: called before
        a new version can answer, so one that kills the process on its first
        requests is counted against itself, never against the version before it."""
        if self._set(model, version, digest):
            await self._save()

    def serving(self, model: str, version: int, digest: str) -> None:
        """Record (in the background) that `model` now serves these bytes (after a
        rollback: the version served before, so its first answers are not new)."""
        if self._set(model, version, digest):
            self._background()

    def _set(self, model: str, version: int, digest: str) -> bool:
        if self._store is None:
            return False
        current = self._record.models.get(model)
        if current is not None and (current.version, current.digest) == (version, digest):
            return False
        since = time.time()
        self._record = self._record.serving(model, version, digest, since)
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[model] = loop.call_later(self.window_s, self._survived, model, digest,
                                              since)
        return True

    def current(self, model: str) -> Serving | None:
        return self._record.models.get(model)

    def put_back(self, model: str, before: Serving | None) -> None:
        """Undo `will_serve` for a change that was not made (it could not be saved)."""
        if self._store is None or self._record.models.get(model) == before:
            return
        if before is None:
            self.not_serving(model)
            return
        self._set(model, before.version, before.digest)
        self._record = ServingRecord(False, {**self._record.models, model: before},
                                     self._record.crashes)
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        if not before.survived:  # its own window goes on where it was
            left = max(0.0, before.since + self.window_s - time.time())
            self._timers[model] = asyncio.get_running_loop().call_later(
                left, self._survived, model, before.digest, before.since)
        self._background()

    def not_serving(self, model: str) -> None:
        if self._store is None:
            return
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        self._record = self._record.not_serving(model)
        self._background()

    def _survived(self, model: str, digest: str, since: float) -> None:
        self._timers.pop(model, None)
        self._record = self._record.survived(model, digest, since=since)
        self._background()

    def forgive(self, digest: str) -> None:
        """An operator lifted the quarantine: the digest's crash count starts over."""
        self._record = self._record.without_crashes(digest)
        self._background()

    def _background(self) -> None:
        task = asyncio.get_running_loop().create_task(self._save())
        task.add_done_callback(_log_failure)

    async def stopped_cleanly(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._record = self._record.stopped_cleanly()
        await self._save()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("serving record not saved", extra={"reason": str(task.exception())})
