"""Persisting the serving state and appending events, in order, off the loop.

After each change the state file is replaced (temp, fsync, rename) and then the
event line appended and fsynced, both on one I/O thread: the event loop never
waits on the disk, and writes happen in the order the changes did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sidecar.state.events import Event, EventLog
from sidecar.state.store import SavedState, StateStore


class Journal:
    def __init__(self, store: StateStore | None, events: EventLog,
                 snapshot: Callable[[], SavedState]) -> None:
        self._store = store
        self._events = events
        self._snapshot = snapshot
        self._io = ThreadPoolExecutor(1, thread_name_prefix="state-io")

    async def persist(self) -> None:
        """Write the serving state (a change no event describes, e.g. a watermark)."""
        if self._store is not None:
            store, state = self._store, self._snapshot()
            await asyncio.get_running_loop().run_in_executor(self._io, store.save, state)

    async def commit(self, event: Event) -> None:
        """Persist the serving state, then append the event; both fsynced."""
        state = self._snapshot() if self._store is not None else None
        await asyncio.get_running_loop().run_in_executor(self._io, self._write, state, event)
        self._events.publish(event)

    async def record(self, event: Event) -> None:
        """Append an event that changes no persisted state."""
        await asyncio.get_running_loop().run_in_executor(self._io, self._events.write, event)
        self._events.publish(event)

    def _write(self, state: SavedState | None, event: Event) -> None:
        if state is not None and self._store is not None:
            self._store.save(state)
        self._events.write(event)

    def close(self) -> None:
        self._io.shutdown(wait=True)
