"""Watch the model repository and say which versions exist and are complete.

Knows nothing of sessions or gRPC: each time something changes (debounced), it
rescans the whole repository and hands a `Snapshot` to its consumer. A full
rescan, rather than replaying file events, is what makes atomic renames of
version folders, Kubernetes ConfigMap `..data` symlink swaps and git-sync swaps
of the whole root come out right: whatever the events were, the snapshot is
what is on disk now.

A version's `model.onnx` is *complete* once its size and times have not changed
for the settle time (by our own observation, or by its mtime being that old:
an atomically renamed folder is complete at once). A complete version whose
file or folder disappears is still reported, as *vanishing*, for the settle
time: `git checkout` unlinks a file before it writes the new one, and a
removal counts only once it has lasted. While something settles, the watcher
wakes itself up to look again. It runs with inotify (watchfiles) or
by polling (`--watch-poll`), rescans in full every 30 s as a backstop, and is
restarted, with a full rescan, if it fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from sidecar.source.repository import scan_repository

log = logging.getLogger("sidecar.watcher")

_RESTART_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class FileState:
    size: int
    mtime_ns: int
    ino: int


@dataclass(frozen=True, slots=True)
class VersionSeen:
    number: int
    path: Path
    state: FileState | None  # None: no model file
    complete: bool
    #: gone from disk for less than the settle time: reported as it was last seen
    vanishing: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: dict[str, dict[int, VersionSeen]]
    settling: bool  # some version is not complete yet: look again soon
    #: model folders that could not be read: left as they are until readable
    unreadable: frozenset[str] = frozenset()


def file_state(path: Path) -> FileState | None:
    try:
        st = path.stat()  # follows symlinks: ConfigMap layouts link into ..data
    except OSError:
        return None
    if not path.is_file():
        return None
    return FileState(st.st_size, st.st_mtime_ns, st.st_ino)


class Settler:
    """Remembers when each file state was first seen, to tell complete files."""

    def __init__(self, settle_s: float) -> None:
        self.settle_ns = int(settle_s * 1e9)
        self._first_seen: dict[Path, tuple[FileState, int]] = {}
        #: complete files as last seen, by path: (model, number, state)
        self._present: dict[Path, tuple[str, int, FileState]] = {}
        #: path -> when it was first seen missing
        self._gone_since: dict[Path, int] = {}

    def complete(self, path: Path, state: FileState | None, now_ns: int) -> bool:
        if state is None:
            self._first_seen.pop(path, None)
            return False
        seen = self._first_seen.get(path)
        if seen is None or seen[0] != state:
            self._first_seen[path] = (state, now_ns)
            seen = (state, now_ns)
        old_enough = now_ns - state.mtime_ns >= self.settle_ns
        return old_enough or now_ns - seen[1] >= self.settle_ns

    def vanishing(self, present: dict[Path, tuple[str, int, FileState]],
                  existing: set[Path], now_ns: int) -> list[tuple[str, int, Path, FileState]]:
        """Complete files seen before and missing now, for less than the settle
        time: (model, number, path, state last seen). `present` holds this scan's
        complete files, `existing` every file it found (one being rewritten is
        not missing); `present` becomes what the next scan compares with."""
        going: list[tuple[str, int, Path, FileState]] = []
        for path, (model, number, state) in self._present.items():
            if path in existing:
                continue
            since = self._gone_since.get(path, now_ns)
            if now_ns - since < self.settle_ns:
                going.append((model, number, path, state))
                present[path] = (model, number, state)  # look again next time
        self._gone_since = {path: self._gone_since.get(path, now_ns) for _, _, path, _ in going}
        self._present = present
        return going


def take_snapshot(root: Path, settler: Settler) -> Snapshot:
    now = time.time_ns()
    models: dict[str, dict[int, VersionSeen]] = {}
    settling = False
    unreadable: set[str] = set()
    present: dict[Path, tuple[str, int, FileState]] = {}
    existing: set[Path] = set()
    for name, versions in scan_repository(root, unreadable).items():
        seen: dict[int, VersionSeen] = {}
        for number, disk in versions.items():
            state = file_state(disk.path)
            complete = settler.complete(disk.path, state, now)
            settling = settling or (state is not None and not complete)
            seen[number] = VersionSeen(number, disk.path, state, complete)
            if state is not None:
                existing.add(disk.path)
                if complete:
                    present[disk.path] = (name, number, state)
        models[name] = seen
    for name, number, path, state in settler.vanishing(present, existing, now):
        if name in unreadable:
            continue
        settling = True
        models.setdefault(name, {})[number] = VersionSeen(number, path, state, True,
                                                          vanishing=True)
    return Snapshot(models, settling, frozenset(unreadable))


def _interesting(change: watchfiles.Change, path: str) -> bool:
    """Skip editor and copy temporaries; everything else may matter."""
    name = os.path.basename(path)
    if name.endswith((".tmp", ".part", "~", ".swp")):
        return False
    if name.startswith(".") and not name.startswith(".."):
        return False  # dot files; but ..data / ..2026_... (ConfigMap) do matter
    return True


class RepositoryWatcher:
    def __init__(
        self,
        root: Path,
        on_snapshot: Callable[[Snapshot], Awaitable[None]],
        *,
        settle_s: float = 0.5,
        poll: bool = False,
        poll_interval_ms: int = 300,
        debounce_ms: int = 100,
        resync_s: float = 30.0,
    ) -> None:
        self._root = root
        self._on_snapshot = on_snapshot
        self._settler = Settler(settle_s)
        self._settle_ms = max(50, int(settle_s * 1000))
        self._poll = poll
        self._poll_ms = poll_interval_ms
        self._debounce_ms = debounce_ms
        self._resync_s = resync_s
        self.restarts = 0

    async def rescan(self) -> Snapshot:
        snapshot = await asyncio.to_thread(take_snapshot, self._root, self._settler)
        await self._on_snapshot(snapshot)
        return snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set; a failure is logged and the watch restarted."""
        while not stop.is_set():
            try:
                await self._watch(stop)
            except Exception:
                self.restarts += 1
                log.exception("watcher failed; restarting with a full rescan",
                              extra={"restarts": self.restarts})
                try:
                    await asyncio.wait_for(stop.wait(), _RESTART_DELAY_S)
                except TimeoutError:
                    pass

    async def _watch(self, stop: asyncio.Event) -> None:
        # The root may be a link that git-sync swaps: watch its target, and look at
        # where it points on every wake-up (at least once per settle interval).
        target = self._root.resolve()
        log.info("watching", extra={"repository": str(self._root), "target": str(target),
                                    "polling": self._poll})
        snapshot = await self.rescan()
        # Changes between that scan and the watch going live would be lost: the
        # first wake-up rescans whatever it brings, and so does every resync period
        # (a backstop for events inotify drops when its queue overflows).
        first, next_resync = True, time.monotonic() + self._resync_s
        async for changes in watchfiles.awatch(
            target,
            watch_filter=_interesting,
            debounce=self._debounce_ms,
            step=min(50, self._debounce_ms),
            stop_event=stop,
            force_polling=self._poll,
            poll_delay_ms=self._poll_ms,
            rust_timeout=self._settle_ms,
            yield_on_timeout=True,
            recursive=True,
            ignore_permission_denied=True,
        ):
            if self._root.resolve() != target:
                log.info("repository root moved", extra={"target": str(self._root.resolve())})
                return  # watch the new target (run() calls _watch again)
            due = first or time.monotonic() >= next_resync
            if not changes and not snapshot.settling and not due:
                continue  # a timeout with nothing settling: nothing to look at
            if due:
                first, next_resync = False, time.monotonic() + self._resync_s
            snapshot = await self.rescan()

