"""The append-only event log: one JSON line per change, fsynced per event.

Every change of serving state (load, activate, rollback, unload, pin, a failed
load, a restore at start) is an `Event` with a sequence number. The log is
read back page by page (`page`, `page_async`) and followed live (`subscribe`).

Its files (sidecar.state.eventfiles): `events.jsonl` is rotated to
`events.jsonl.1`, `.2`, ... before a line would take it past `max_bytes`, and
`keep` rotated files are kept. Sequence numbers never repeat: on open they
continue above the highest one in any file (and above a floor the caller may
give). Opening never fails on content: a line torn by a crash (no final
newline) is cut off; blank, non-JSON and ill-typed lines are skipped with one
warning per file; unknown fields are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sidecar.state import eventfiles

log = logging.getLogger("sidecar.events")

EVENTS_FILE = "events.jsonl"
_RECENT = 10_000  # events kept in memory for paging without reading the files
_BACKLOG = 1_000  # events a follower may lag before it is dropped
PAGE_BYTES = 1024 * 1024  # a page stops once its events' JSON reaches this
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_KEEP = 4


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
    def from_json(data: Any) -> Event:
        """The event a JSON object describes; unknown fields are dropped. Raises
        ValueError for a missing field or a value of the wrong type."""
        problem = _problem(data)
        if problem:
            raise ValueError(problem)
        get = data.get
        return Event(data["seq"], float(data["time"]), data["model"], data["action"],
                     data["actor"], get("reason", ""), get("from_version", 0),
                     get("from_digest", ""), get("to_version", 0), get("to_digest", ""),
                     get("details", {}))


_TEXT = ("model", "action", "actor")  # required strings
_OPTIONAL_TEXT = ("reason", "from_digest", "to_digest")
_NUMBERS = ("from_version", "to_version")


#: Sequence numbers (and versions) travel as int64 on the wire.
MAX_SEQ = 2**63 - 1
#: Numbers skipped when the log holds less than the state file says it had (it
#: was emptied or lost): events that saved no state may have used some of them.
LOST_SEQ_GAP = 10_000


def _problem(data: Any) -> str:
    """What is wrong with an event's JSON object ("" if nothing). Exact type tests
    (JSON gives no subclasses; bool is not an int here): this runs per line read."""
    if type(data) is not dict:
        return "an event is a JSON object"
    seq, stamp = data.get("seq"), data.get("time")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        return "'seq' is not a positive 63-bit integer"
    if type(stamp) not in (int, float) or not math.isfinite(stamp):  # type: ignore[arg-type]
        return "'time' is not a number"
    for name in _TEXT:
        if type(data.get(name)) is not str:
            return f"{name!r} is missing or not a string"
    for name in _OPTIONAL_TEXT:
        if type(data.get(name, "")) is not str:
            return f"{name!r} is not a string"
    for name in _NUMBERS:
        value = data.get(name, 0)
        if type(value) is not int or not 0 <= value <= MAX_SEQ:
            return f"{name!r} is not a 63-bit integer"
    details = data.get("details", {})
    if type(details) is not dict or any(type(v) is not str for v in details.values()):
        return "'details' is not an object of strings"
    return ""


def encode(event: Event) -> bytes:
    """The event's line in the file."""
    return json.dumps(event.to_json(), sort_keys=True).encode() + b"\n"


def decode(line: bytes) -> Event | None:
    """The event of one line, or None for a blank, non-JSON or ill-typed line."""
    try:
        return Event.from_json(json.loads(line))
    except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
        return None


class _Page:
    """The events of one page, within its count and its byte budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: list[Event] = []
        self.size = 0
        self.full = False

    def offer(self, event: Event, size: int) -> bool:
        """Add an event (`size`: its line's bytes); False once the page is full."""
        if self.events and self.size + size > PAGE_BYTES:
            self.full = True
            return False
        self.events.append(event)
        self.size += size
        self.full = len(self.events) >= self.limit
        return not self.full


def _read(handles: list[BinaryIO], model: str) -> Iterator[tuple[Event, int]]:
    """The events of open files, in order, skipping damaged lines and a last line
    still being written (no newline yet). With `model`, lines that cannot be of
    that model (its name as the sidecar writes it is not in them) are not parsed."""
    needle = json.dumps(model).encode() if model else b""
    for handle in handles:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            if needle not in line:
                continue
            event = decode(line)
            if event is not None:
                yield event, len(line)


def _start(handles: list[BinaryIO], after: int) -> int:
    """The first file that can hold seq `after + 1`: the newest one whose first
    event is at most that (seqs only grow from file to file)."""
    for i in range(len(handles) - 1, 0, -1):
        first = decode(eventfiles.first_line(handles[i]))
        if first is not None and first.seq <= after + 1:
            return i
    return 0


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
    def __init__(self, directory: Path | None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int = DEFAULT_KEEP, recent: int = _RECENT) -> None:
        """`directory` None keeps events in memory only (tests of other parts).
        `events.jsonl` is rotated before it would exceed `max_bytes`; `keep`
        rotated files are kept (at least 1); the newest `recent` events are also
        kept in memory, older pages are read from the files."""
        self.path = directory / EVENTS_FILE if directory else None
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        #: the newest events with the size of their line, for paging from memory
        self._recent: deque[tuple[Event, int]] = deque(maxlen=max(1, recent))
        self._evicted = 0  # the highest seq not in `_recent` (0: it holds them all)
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self._file: io.FileIO | None = None
        self._size = 0  # bytes in the current file
        self._rotate_at = max_bytes
        self._files_lock = threading.Lock()  # rotation vs. a reader opening the files
        #: the last line written: (file, its size before, seq), for `retract`
        self._last: tuple[io.FileIO, int, int] | None = None
        #: (model, action, actor) -> events published since start, for metrics
        self.counts: dict[tuple[str, str, str], int] = {}

    def open(self, seq_floor: int = 0) -> None:
        """Read the log back and open it for appending (blocking, at start). The
        next seq is above every seq in any file, and above `seq_floor`."""
        if self.path is not None:
            eventfiles.finish_rotation(self.path)
            cut = eventfiles.cut_torn_tail(self.path)
            if cut:
                log.warning("cut a torn event line", extra={"bytes": cut})
            newest: list[tuple[Event, int]] = []
            for file in reversed(eventfiles.all_files(self.path)):
                self._load(file, newest)
            self._recent.extend(reversed(newest))
            self._file = eventfiles.open_for_append(self.path)
            self._size = self.path.stat().st_size
        seq_floor = min(seq_floor, MAX_SEQ - LOST_SEQ_GAP)
        if self._seq < seq_floor:
            # The log holds less than the state file says it had: events that saved
            # no state may have taken numbers above the saved one. Skip past them.
            log.warning("event log shorter than the saved state says; numbers skipped",
                        extra={"log_seq": self._seq, "saved_seq": seq_floor,
                               "next_seq": seq_floor + LOST_SEQ_GAP + 1})
            self._seq = seq_floor + LOST_SEQ_GAP

    def _load(self, file: Path, newest: list[tuple[Event, int]]) -> None:
        """Read one file, newest line first: note its highest seq, add its events
        to `newest` while memory has room, count and report its damaged lines."""
        room = self._recent.maxlen or 0
        skipped = 0
        for line in reversed(eventfiles.lines(file.read_bytes())):
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
                data = None
            if data is None or _problem(data):
                skipped += 1
                continue
            self._seq = max(self._seq, data["seq"])
            if len(newest) < room:
                newest.append((Event.from_json(data), len(line) + 1))
            else:
                self._evicted = max(self._evicted, data["seq"])
        if skipped:
            log.warning("skipped damaged event lines",
                        extra={"lines": skipped, "file": str(file)})

    def _remember(self, event: Event, size: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._evicted = max(self._evicted, self._recent[0][0].seq)
        self._recent.append((event, size))

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
        """Append and fsync one event line, rotating first if the line would take
        the file past the limit (blocking: call from the I/O thread). A failed
        write is cut back off the file, so it cannot damage the next line."""
        if self.path is None:
            return
        if self._file is None:  # it could not be created at start (a full disk)
            self._file = eventfiles.open_for_append(self.path)
            self._size = self.path.stat().st_size
        line = encode(event)
        if self._size and self._size + len(line) > self._rotate_at:
            self._rotate()
        file = self._file
        try:
            view = memoryview(line)
            while view:
                view = view[file.write(view):]
            os.fsync(file.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                file.truncate(self._size)
            raise
        self._last = (file, self._size, event.seq)
        self._size += len(line)

    def retract(self, event: Event) -> None:
        """Cut the line `write` just appended for `event` off again (its change could
        not be saved): truncating needs no free space. Blocking, I/O thread."""
        last = self._last
        if last is None or last[2] != event.seq or last[0] is not self._file:
            return
        file, size, _ = last
        file.truncate(size)
        os.fsync(file.fileno())
        self._size, self._last = size, None

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        try:
            with self._files_lock:
                fresh = eventfiles.rotate(self.path, self.keep)
        except OSError as exc:
            # Keep appending to the current file (under its old name or as .1);
            # try again once another limit's worth has been written.
            self._rotate_at = self._size + self.max_bytes
            log.error("event log rotation failed", extra={"error": str(exc)})
            return
        with contextlib.suppress(OSError):
            self._file.close()
        self._file, self._size, self._rotate_at = fresh, 0, self.max_bytes

    def publish(self, event: Event) -> None:
        """Make a written event visible: paging, followers, the log (event loop)."""
        self._remember(event, len(encode(event)))
        key = (event.model, event.action, event.actor)
        self.counts[key] = self.counts.get(key, 0) + 1
        for sub in list(self._subscribers):
            sub.offer(event)
        log.info(event.action, extra={
            "model": event.model, "actor": event.actor, "reason": event.reason,
            "from_version": event.from_version, "to_version": event.to_version,
            "to_digest": event.to_digest, "seq": event.seq, **event.details})

    def page(self, *, after: int = 0, limit: int = 100, model: str = "") -> list[Event]:
        """Events with seq > after, oldest first: at most `limit`, and no more once
        their JSON reaches PAGE_BYTES (always at least one). Events older than
        memory holds are read from the files, rotated ones included: that blocks,
        so on the event loop use `page_async`."""
        page, cursor = _Page(limit), after
        while not page.full and not self._in_memory(cursor):
            until = self._evicted
            self._from_files(page, cursor, until, model)
            cursor = until
        if not page.full:
            self._from_memory(page, cursor, model)
        return page.events

    async def page_async(self, *, after: int = 0, limit: int = 100, model: str = ""
                         ) -> list[Event]:
        """`page`, reading the files (when it must) on a worker thread."""
        page, cursor = _Page(limit), after
        while not page.full and not self._in_memory(cursor):
            until = self._evicted  # more may leave memory meanwhile: then loop again
            await asyncio.to_thread(self._from_files, page, cursor, until, model)
            cursor = until
        if not page.full:
            self._from_memory(page, cursor, model)
        return page.events

    def _in_memory(self, after: int) -> bool:
        """Whether memory holds every event after `after` (it holds the newest)."""
        return self.path is None or after >= self._evicted

    def _from_memory(self, page: _Page, after: int, model: str) -> None:
        for event, size in self._recent:
            if event.seq <= after or (model and event.model != model):
                continue
            if not page.offer(event, size):
                return

    def _from_files(self, page: _Page, after: int, until: int, model: str) -> None:
        """Add the events with after < seq <= until from the files (any thread: it
        never touches memory)."""
        assert self.path is not None
        with self._files_lock:  # a rotation cannot rename files between two opens
            handles = eventfiles.open_all(self.path)
        with contextlib.ExitStack() as stack:
            for handle in handles:
                stack.enter_context(handle)
            for event, size in _read(handles[_start(handles, after):], model):
                if event.seq > until:
                    return
                if event.seq <= after or (model and event.model != model):
                    continue
                if not page.offer(event, size):
                    return

    def history(self) -> list[Event]:
        """Every event still in the files, oldest first (blocking: at start, to
        rebuild a lost state file)."""
        if self.path is None:
            return [event for event, _ in self._recent]
        with self._files_lock:
            handles = eventfiles.open_all(self.path)
        try:
            return [event for event, _ in _read(handles, "")]
        finally:
            for handle in handles:
                handle.close()

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
