"""Persisting the serving state and appending events, in order, off the loop.

After each change the event line is appended and fsynced and then the state
file replaced (temp, fsync, rename), both on one I/O thread: the event loop never
waits on the disk, and writes happen in the order they were submitted.

A command submits its write *while it holds the model's lock* (so the journal
order is the swap order) and awaits durability *after* releasing it: the next
change of the same model (a guard rollback, say) never waits for the previous
command's fsyncs, and every command is acknowledged only once it is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sidecar.errors import UnavailableError
from sidecar.state.events import Event, EventLog
from sidecar.state.store import SavedState, StateStore

log = logging.getLogger("sidecar.state")


class Journal:
    def __init__(self, store: StateStore | None, events: EventLog,
                 snapshot: Callable[[], SavedState]) -> None:
        self._store = store
        self._events = events
        self._snapshot = snapshot
        self._io = ThreadPoolExecutor(1, thread_name_prefix="state-io")

    def submit(self, event: Event | None) -> asyncio.Future[None]:
        """Snapshot the serving state now and queue its write (then the event's);
        the future is done once both are durable, or fails with the OS error."""
        state = self._snapshot() if self._store is not None else None
        return asyncio.get_running_loop().run_in_executor(self._io, self._write, state, event)

    async def settle(self, pending: asyncio.Future[None], event: Event | None) -> None:
        """Wait for a submitted write; publish its event once it is durable."""
        try:
            await asyncio.shield(pending)
        except OSError as exc:
            raise UnavailableError(
                f"the change could not be saved ({exc.strerror or exc}); nothing changed"
            ) from exc
        if event is not None:
            self._events.publish(event)

    async def commit(self, event: Event | None) -> None:
        """Append the event, then persist the serving state; both fsynced."""
        await self.settle(self.submit(event), event)

    async def persist(self) -> None:
        """Write the serving state (a change no event describes, e.g. a watermark)."""
        await self.commit(None)

    async def record(self, event: Event) -> None:
        """Append an event that changes no persisted state. One that cannot be
        written (disk full) is still published and logged: nothing depends on it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, self._events.write,
                                                             event)
        except OSError as exc:
            log.error("event not saved", extra={"seq": event.seq, "action": event.action,
                                                "reason": exc.strerror or str(exc)})
        self._events.publish(event)

    async def run(self, work: Callable[[], Any]) -> Any:
        """Run other blocking writes (the serving record) in the journal's order."""
        return await asyncio.get_running_loop().run_in_executor(self._io, work)

    def _write(self, state: SavedState | None, event: Event | None) -> None:
        """The event, then the state; if the state cannot be written the event line
        is cut off again (truncating needs no free space), so a refused change
        leaves nothing of itself on disk. A crash between the two leaves the event
        and the old state: the state file is what a restart serves."""
        if event is not None:
            self._events.write(event)
        if state is None or self._store is None:
            return
        try:
            self._store.save(state)
        except OSError:
            if event is not None:
                try:
                    self._events.retract(event)
                except OSError as exc:
                    log.error("event line of a change that was not saved stays in the log",
                              extra={"seq": event.seq, "reason": exc.strerror or str(exc)})
            raise

    def close(self) -> None:
        self._io.shutdown(wait=True)
