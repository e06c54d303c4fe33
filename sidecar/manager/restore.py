"""Bringing each model back at start: the saved versions by digest, or a rule.

- Saved active (and previous) are found by digest: at their saved number, or
  under another number if the bytes moved there (`restore-moved`).
- Quarantined bytes are never restored, neither as active nor as the warm
  previous (after a crash loop the saved active is quarantined: the saved
  previous serves instead, else the highest loadable version).
- If the saved bytes are gone or changed (`restore-mismatch`) or fail to load,
  the model serves its highest loadable version, as with no saved state.
- A model unloaded by a command before the restart stays unloaded.
- A canary or shadow that ran before the restart is not restored: it is ended
  with an event saying so (start it again to go on).
- With no saved state: the highest loadable version is active and the next
  highest loadable one is kept warm as previous (with 2+ warm versions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

from sidecar.manager.entry import ModelEntry
from sidecar.manager.journal import Journal
from sidecar.manager.loading import VersionLoading
from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion
from sidecar.state.events import EventLog
from sidecar.state.store import SavedModel, VersionRef

log = logging.getLogger("sidecar.manager")
ACTOR = "startup"


class Restorer:
    def __init__(self, loading: VersionLoading, journal: Journal, events: EventLog, *,
                 warm_versions: int, quarantine: Mapping[str, str],
                 notify: Callable[[ModelEntry], Awaitable[None]],
                 will_serve: Callable[[ModelEntry, ModelVersion], Awaitable[object]]) -> None:
        self._loading = loading
        self._journal = journal
        self._events = events
        self._warm = warm_versions
        self._quarantine = quarantine
        self._notify = notify
        self._will_serve = will_serve

    async def restore(self, entry: ModelEntry, saved: SavedModel | None) -> None:
        async with entry.lock:
            await self._end_candidate(entry, saved)
            if saved is not None and saved.active is None and saved.unloaded:
                entry.unloaded = True
                await self._journal.record(self._events.make(
                    entry.name, "restore", ACTOR,
                    "the model was unloaded by a command before the restart; it stays unloaded"))
                return
            active, why = None, "no saved state"
            if saved is not None and saved.active is not None:
                active, why = await self._find_saved(entry, saved.active, "active")
                if active is None and saved.previous is not None:
                    active, _ = await self._find_saved(entry, saved.previous, "previous")
                    why += "; serving the saved previous version" if active else ""
            fallback = active is None
            if active is None:
                active = await self._loading.highest(entry.versions, ACTOR)
            if active is None:
                await self._journal.record(self._events.make(
                    entry.name, "restore-failed", ACTOR,
                    f"no version of model '{entry.name}' can be loaded"))
                log.error("model not served", extra={"model": entry.name})
                return
            previous = await self._previous(entry, saved, active)
            loaded = {v.number: v for v in (previous, active) if v is not None}
            await self._will_serve(entry, active)  # durable before its first answer
            entry.serving = ServingState(active, previous, MappingProxyType(loaded))
            active.activated_at = time.time()
            if fallback:
                reason = f"{why}: serving the highest loadable version"
            elif why:
                reason = why
            else:
                reason = "restored the saved active version"
            await self._journal.record(self._events.make(
                entry.name, "restore", ACTOR, reason, to_version=active.number,
                to_digest=active.digest,
                details={"previous": str(previous.number) if previous else ""}))
            await self._notify(entry)

    async def _previous(self, entry: ModelEntry, saved: SavedModel | None,
                        active: ModelVersion) -> ModelVersion | None:
        if self._warm < 2:
            return None
        previous = None
        if saved is not None:
            for ref in (saved.previous, saved.active):
                if ref is not None and previous is None:
                    found, _ = await self._find_saved(entry, ref, "previous", quiet=True)
                    previous = found if found is not active else None
        if previous is None:
            previous = await self._loading.highest(entry.versions, ACTOR,
                                                   below=active.number, skip=active)
        return previous

    async def _end_candidate(self, entry: ModelEntry, saved: SavedModel | None) -> None:
        if saved is None or saved.candidate is None:
            return
        kind, ref = saved.candidate
        await self._journal.record(self._events.make(
            entry.name, f"{kind}-abort", ACTOR,
            f"the {kind} did not survive the restart; start it again to go on",
            from_version=ref.number, from_digest=ref.digest))
        entry.note = f"{kind} of version {ref.number} ended by the restart"

    async def _find_saved(self, entry: ModelEntry, ref: VersionRef, role: str, *,
                          quiet: bool = False) -> tuple[ModelVersion | None, str]:
        """The version with the saved digest: at its number, else wherever it moved."""
        if ref.digest in self._quarantine:
            reason = (f"saved {role} version {ref.number} is quarantined"
                      f" ({self._quarantine[ref.digest]})")
            if not quiet:
                await self._journal.record(self._events.make(
                    entry.name, "restore-quarantined", ACTOR, reason,
                    from_version=ref.number, from_digest=ref.digest))
            return None, reason
        candidates = sorted(entry.versions.values(), key=lambda v: v.number != ref.number)
        for version in candidates:
            identity = await self._loading.identify(version)
            if identity is None or identity.digest != ref.digest:
                continue
            if not await self._loading.ensure(version, ACTOR):
                return None, f"saved {role} version {ref.number} fails to load: {version.reason}"
            if version.number != ref.number:
                await self._journal.record(self._events.make(
                    entry.name, "restore-moved", ACTOR,
                    f"saved {role} digest found at version {version.number}, not {ref.number}",
                    from_version=ref.number, to_version=version.number, to_digest=ref.digest))
            return version, ""
        reason = (f"saved {role} version {ref.number} (digest {ref.digest[:12]}) is no"
                  " longer on disk with that digest")
        if not quiet:
            await self._journal.record(self._events.make(
                entry.name, "restore-mismatch", ACTOR, reason,
                from_version=ref.number, from_digest=ref.digest))
        return None, reason
