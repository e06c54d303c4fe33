"""The append-only event log: one JSON line per change, fsynced per event.

Every change of serving state (load, activate, rollback, unload, pin, a failed
load, a restore at start) is an `Event` with a sequence number. The log is
read back page by page (`page`) and followed live (`subscribe`). A line torn
by a crash (no final newline) is cut off when the log is opened again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.events")

EVENTS_FILE = "events.jsonl"
_RECENT = 10_000  # events kept in memory for paging without reading the file
_BACKLOG = 1_000  # events a follower may lag before it is dropped


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time: float  # unix seconds
    model: str
    action: str
    actor: str
    reason: str = ""
    from_version: int = 0
    from_digest: str = ""
    to_version: int = 0
    to_digest: str = ""
    details: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Event:
        return Event(**data)


class Subscription:
    """New events for one follower. A follower that falls `_BACKLOG` events
    behind is dropped (`overflowed`), so a stuck client cannot grow memory."""

    def __init__(self, log_: EventLog) -> None:
        self._log = log_
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=_BACKLOG)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.end()

    def end(self) -> None:
        """Stop following: the reader gets None next (after what it has queued,
        unless the queue is full: then at once)."""
        self._log.unsubscribe(self)
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def next(self) -> Event | None:
        return await self.queue.get()

    def close(self) -> None:
        self._log.unsubscribe(self)


class EventLog:
    def __init__(self, directory: Path | None) -> None:
        """`directory` None keeps events in memory only (tests of other parts)."""
        self.path = directory / EVENTS_FILE if directory else None
        self._recent: deque[Event] = deque(maxlen=_RECENT)
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self._file: Any = None
        #: (model, action, actor) -> events published since start, for metrics
        self.counts: dict[tuple[str, str, str], int] = {}

    def open(self) -> None:
        if self.path is None:
            return
        self._repair()
        if self.path.exists():
            with self.path.open("rb") as f:
                for line in f:
                    event = Event.from_json(json.loads(line))
                    self._recent.append(event)
                    self._seq = event.seq
        self._file = self.path.open("ab")

    def _repair(self) -> None:
        """Cut a last line torn by a crash (it was never acknowledged)."""
        assert self.path is not None
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            log.warning("cut a torn event line", extra={"bytes": len(data) - keep})

    @property
    def last_seq(self) -> int:
        return self._seq

    def make(self, model: str, action: str, actor: str, reason: str = "", *,
             from_version: int = 0, from_digest: str = "", to_version: int = 0,
             to_digest: str = "", details: dict[str, str] | None = None) -> Event:
        """A new event with the next sequence number (call on the event loop)."""
        self._seq += 1
        return Event(self._seq, time.time(), model, action, actor, reason, from_version,
                     from_digest, to_version, to_digest, details or {})

    def write(self, event: Event) -> None:
        """Append and fsync one event line (blocking: call from the I/O thread)."""
        if self._file is not None:
            self._file.write(json.dumps(event.to_json(), sort_keys=True).encode() + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def publish(self, event: Event) -> None:
        """Make a written event visible: paging, followers, the log (event loop)."""
        self._recent.append(event)
        key = (event.model, event.action, event.actor)
        self.counts[key] = self.counts.get(key, 0) + 1
        for sub in list(self._subscribers):
            sub.offer(event)
        log.info(event.action, extra={
            "model": event.model, "actor": event.actor, "reason": event.reason,
            "from_version": event.from_version, "to_version": event.to_version,
            "to_digest": event.to_digest, "seq": event.seq, **event.details})

    def page(self, *, after: int = 0, limit: int = 100, model: str = "") -> list[Event]:
        """Events with seq > after (oldest first), at most `limit`."""
        events = self._recent if after >= self._oldest_recent() - 1 else self._read_all()
        out: list[Event] = []
        for event in events:
            if event.seq > after and (not model or event.model == model):
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def _oldest_recent(self) -> int:
        return self._recent[0].seq if self._recent else 1

    def _read_all(self) -> list[Event]:
        if self.path is None or not self.path.exists():
            return list(self._recent)
        with self.path.open("rb") as f:
            return [Event.from_json(json.loads(line)) for line in f if line.strip()]

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def end_followers(self) -> None:
        """End every follower's stream (at shutdown, so none holds the server)."""
        for sub in list(self._subscribers):
            sub.end()

    def close(self) -> None:
        self.end_followers()
        if self._file is not None:
            self._file.close()
            self._file = None
