"""ModelManager: which versions exist, which are loaded, which one serves.

The one place that moves versions between the sets on disk / loaded / serving.
Requests call `acquire` (sync: a lookup on an immutable snapshot plus an
in-flight count) and `release`. Commands change a model's serving state under
that model's lock, so they are serialised per model and parallel across
models. Loads run in their own thread pool and *outside* the lock, so a slow
load never delays a rollback. A version is closed only after it left the
serving state and drained. Every change is persisted (state file, then event
log line, both fsynced off the event loop) before the command returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sidecar.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from sidecar.loader.onnx import FileIdentity, SessionConfig, load
from sidecar.manager.candidates import Candidates
from sidecar.manager.compat import incompatibilities
from sidecar.manager.entry import ModelEntry, SwapResult
from sidecar.manager.journal import Journal
from sidecar.manager.loading import Loader, VersionLoading
from sidecar.manager.plan import ModelFacts
from sidecar.manager.restore import Restorer
from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion, Phase
from sidecar.source.repository import parse_version, scan_model, scan_repository
from sidecar.state.events import EventLog
from sidecar.state.store import SavedModel, SavedState, StateStore, VersionRef

log = logging.getLogger("sidecar.manager")

#: Told (model name, has a serving version) after every change of a model.
ReadinessListener = Callable[[str, bool], Awaitable[None]]
#: Told (entry, the version active before, actor) right after a change of what
#: serves (activate, rollback, canary, shadow); must not await.
SwapHook = Callable[[ModelEntry, "ModelVersion | None", str], None]

#: Actors whose changes a pin blocks (a pinned model changes only by command).
AUTOMATIC_ACTORS = frozenset({"watcher", "guard"})
MIN_DIGEST_PREFIX = 12


class ModelManager:
    def __init__(
        self,
        repository: Path,
        config: SessionConfig,
        *,
        store: StateStore | None = None,
        events: EventLog | None = None,
        warm_versions: int = 2,
        load_threads: int = 2,
        loader: Loader = load,
    ) -> None:
        self._repository = repository
        self._config = config
        self._store = store
        self.events = events or EventLog(None)
        self._warm_versions = max(1, warm_versions)
        self._models: dict[str, ModelEntry] = {}
        self._listeners: list[ReadinessListener] = []
        self.quarantine: dict[str, str] = {}  # digest -> why; shared with the loader
        self._loading = VersionLoading(config, loader, load_threads,
                                       on_failure=self._load_failed, quarantine=self.quarantine)
        self._journal = Journal(store, self.events, self._snapshot)
        self._swap_hooks: list[SwapHook] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self.candidates = Candidates(self)
        self.started = False

    @property
    def journal(self) -> Journal:
        return self._journal

    @property
    def loading(self) -> VersionLoading:
        return self._loading

    def add_swap_hook(self, hook: SwapHook) -> None:
        self._swap_hooks.append(hook)

    def swapped(self, entry: ModelEntry, before: ModelVersion | None, actor: str) -> None:
        for hook in self._swap_hooks:
            hook(entry, before, actor)

    # ---- queries (request path) ----------------------------------------------

    def acquire(self, model: str, version: str = "") -> ModelVersion:
        """Take a handle on the version a request names (or the active one).

        The caller must `release()` the returned version when done.
        """
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model}'")
        serving = entry.serving  # read once: the request's snapshot
        if version:
            number = parse_version(version)
            chosen = serving.loaded.get(number) if number is not None else None
            if chosen is None:
                raise self._why_not_loaded(entry, version, number)
        else:
            chosen = serving.active
            if chosen is None:
                raise UnavailableError(f"model '{model}' has no serving version")
            if serving.canary is not None and random.random() < serving.canary_weight:
                chosen = serving.canary
        chosen.inflight += 1
        return chosen

    def _why_not_loaded(
        self, entry: ModelEntry, text: str, number: int | None
    ) -> NotFoundError | UnavailableError:
        known = entry.versions.get(number) if number is not None else None
        if known is None:
            return NotFoundError(f"model '{entry.name}' has no version '{text}'")
        detail = f": {known.reason}" if known.reason else ""
        return UnavailableError(
            f"model '{entry.name}' version {number} is not loaded"
            f" (state {entry.state_of(known)}{detail})"
        )

    def entry(self, model: str) -> ModelEntry:
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model}'")
        return entry

    async def retired(self) -> None:
        """Wait until versions that left serving have drained and closed."""
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def has_model(self, model: str) -> bool:
        return model in self._models

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def is_ready(self, model: str, version: str = "") -> bool:
        entry = self._models.get(model)
        if entry is None:
            return False
        if not version:
            return entry.serving.active is not None
        number = parse_version(version)
        return number is not None and number in entry.serving.loaded

    def all_serving(self) -> bool:
        return all(e.serving.active is not None or e.unloaded for e in self._models.values())

    def add_listener(self, listener: ReadinessListener) -> None:
        self._listeners.append(listener)

    @property
    def warm_versions(self) -> int:
        return self._warm_versions

    # ---- identity and references -----------------------------------------------

    async def identify(self, version: ModelVersion) -> FileIdentity | None:
        return await self._loading.identify(version)

    async def _load_failed(self, version: ModelVersion, actor: str, reason: str) -> None:
        await self._journal.record(self.events.make(
            version.model, "load-failed", actor, reason, to_version=version.number))

    async def resolve(self, entry: ModelEntry, ref: str) -> ModelVersion:
        """A version by number ("3") or by digest prefix (12+ hex characters)."""
        text = ref.strip().lower()
        number = parse_version(text)
        if number is not None and len(text) < MIN_DIGEST_PREFIX:
            if number not in entry.versions:
                self._refresh(entry)
            version = entry.versions.get(number)
            if version is None:
                raise NotFoundError(f"model '{entry.name}' has no version {number}")
            return version
        if len(text) < MIN_DIGEST_PREFIX or any(c not in "0123456789abcdef" for c in text):
            raise InvalidInputError(
                f"'{ref}' is neither a version number nor a digest prefix of"
                f" {MIN_DIGEST_PREFIX}+ hex characters")
        self._refresh(entry)
        for version in list(entry.versions.values()):
            await self.identify(version)
        matches = [v for v in entry.versions.values() if v.digest.startswith(text)]
        if not matches:
            raise NotFoundError(f"model '{entry.name}' has no version with digest {text}...")
        if len(matches) > 1:
            numbers = ", ".join(str(v.number) for v in matches)
            raise InvalidInputError(f"digest prefix {text} matches versions {numbers}")
        return matches[0]

    def _check_expected(self, entry: ModelEntry, expected: str) -> None:
        if not expected:
            return
        active = entry.serving.active
        text = expected.strip().lower()
        if active is None:
            matches = text in {"none", "0"}
        elif parse_version(text) is not None and len(text) < MIN_DIGEST_PREFIX:
            matches = int(text) == active.number
        else:
            matches = len(text) >= MIN_DIGEST_PREFIX and active.digest.startswith(text)
        if not matches:
            current = f"version {active.number} ({active.digest[:12]})" if active else "none"
            raise FailedPreconditionError(
                f"model '{entry.name}': expected active '{expected}', but the active"
                f" version is {current}")

    def check_pin(self, entry: ModelEntry, actor: str) -> None:
        if entry.pinned and actor in AUTOMATIC_ACTORS:
            raise FailedPreconditionError(
                f"model '{entry.name}' is pinned: only an explicit command changes it")

    # ---- disk ------------------------------------------------------------------

    def _refresh(self, entry: ModelEntry) -> None:
        """Bring an entry's version list up to date with the disk (keeps loaded ones)."""
        on_disk = scan_model(self._repository, entry.name)
        for number, disk in on_disk.items():
            known = entry.versions.get(number)
            if known is None:
                entry.versions[number] = ModelVersion(entry.name, number, disk.path)
            elif known.phase is Phase.FAILED:
                known.phase, known.reason = Phase.UNLOADED, ""  # retry on request
        for number in [n for n in entry.versions if n not in on_disk]:
            if entry.versions[number].phase in (Phase.UNLOADED, Phase.FAILED):
                del entry.versions[number]

    def _entry_for(self, model: str) -> ModelEntry:
        entry = self._models.get(model)
        if entry is not None:
            return entry
        if not (self._repository / model).is_dir():
            raise NotFoundError(f"no model '{model}' in the repository")
        return self._models.setdefault(model, ModelEntry(model))

    # ---- startup -----------------------------------------------------------------

    async def start(self) -> None:
        """Restore the saved serving state (see `restore`) for every model on disk."""
        saved = self._store.load() if self._store else SavedState()
        self.quarantine.clear()
        self.quarantine.update(saved.quarantine)
        for name, versions in scan_repository(self._repository).items():
            entry = ModelEntry(name)
            for number, disk in versions.items():
                entry.versions[number] = ModelVersion(name, number, disk.path)
            saved_model = saved.models.get(name, SavedModel())
            entry.pinned, entry.watermark = saved_model.pinned, saved_model.watermark
            entry.guard = dict(saved_model.guard)
            self._models[name] = entry
        restorer = Restorer(self._loading, self._journal, self.events,
                            warm_versions=self._warm_versions, notify=self.notify)
        await asyncio.gather(*(restorer.restore(e, saved.models.get(e.name))
                               for e in self._models.values()))
        for entry in self._models.values():
            if not entry.watermark and entry.serving.active is not None:
                # What a first start serves is not "new" to the watcher; versions
                # above it (they failed to load) are, and are retried on change.
                entry.watermark = entry.serving.active.number
        await self._journal.persist()
        self.started = True

    # ---- commands ----------------------------------------------------------------

    async def load(self, model: str, ref: str, *, actor: str, reason: str = "") -> ModelVersion:
        """Load and warm a version without activating it (it stays WARM until
        activated or unloaded, beyond the warm-version budget)."""
        entry = self._entry_for(model)
        version = await self.resolve(entry, ref)
        if not await self._loading.ensure(version, actor):
            raise UnavailableError(f"{version.label} cannot be loaded: {version.reason}")
        async with entry.lock:
            if version.phase is not Phase.READY:
                raise UnavailableError(f"{version.label} was unloaded meanwhile")
            if entry.serving.role(version) is None:
                version.held = True
                loaded = dict(entry.serving.loaded)
                loaded[version.number] = version
                entry.serving = entry.serving.but(loaded=MappingProxyType(loaded))
            await self._journal.commit(self.events.make(
                model, "load", actor, reason, to_version=version.number,
                to_digest=version.digest))
            await self.notify(entry)
        return version

    async def activate(
        self, model: str, ref: str = "", *, actor: str, expected_active: str = "",
        force: bool = False, reason: str = "",
    ) -> SwapResult:
        """Make a version active: loaded and warmed first (off the lock), checked
        against the active one's signature, then swapped in one assignment. The old
        active version stays warm as the previous one. `ref` "" = highest loadable."""
        start = time.perf_counter_ns()
        entry = self._entry_for(model)
        self.check_pin(entry, actor)
        self._check_expected(entry, expected_active)
        if ref:
            version: ModelVersion | None = await self.resolve(entry, ref)
            assert version is not None
            if not force and (await self.identify(version) or version).digest in self.quarantine:
                raise FailedPreconditionError(
                    f"{version.label} is quarantined ({self.quarantine[version.digest]});"
                    " unquarantine it or use force")
            if not await self._loading.ensure(version, actor):
                raise UnavailableError(f"{version.label} cannot be loaded: {version.reason}")
        else:
            self._refresh(entry)
            if not entry.versions:
                raise NotFoundError(f"model '{model}' has no version folders")
            version = await self._loading.highest(entry.versions, actor)
            if version is None:
                raise UnavailableError(f"no version of model '{model}' can be loaded")
        async with entry.lock:
            try:
                self.check_pin(entry, actor)
                self._check_expected(entry, expected_active)
                if version.phase is not Phase.READY:
                    raise UnavailableError(f"{version.label} was unloaded meanwhile")
                old = entry.serving.active
                if old is not None and old is not version and not force:
                    assert old.loaded is not None and version.loaded is not None
                    problems = incompatibilities(old.loaded.signature, version.loaded.signature)
                    if problems:
                        raise FailedPreconditionError(
                            f"{version.label} is not compatible with active version"
                            f" {old.number}: {'; '.join(problems)} (force to activate anyway)")
            except Exception:
                if entry.serving.role(version) is None:
                    await self._loading.unload(version)  # loaded only for this activation
                raise
            swap_ns = self._swap(entry, version, previous=old)
            entry.unloaded = False
            self.swapped(entry, old, actor)
            await self._journal.commit(self.events.make(
                model, "activate", actor, reason,
                from_version=old.number if old else 0, from_digest=old.digest if old else "",
                to_version=version.number, to_digest=version.digest,
                details={"forced": "true"} if force else None))
            dropped = self._evict(entry)
            await self.notify(entry)
        self._retire(dropped)
        return SwapResult(model, old, version, swap_ns, time.perf_counter_ns() - start)

    async def rollback(
        self, model: str, *, actor: str, expected_active: str = "", reason: str = "",
        details: dict[str, str] | None = None,
    ) -> SwapResult:
        """Swap back to the previous version: a pointer swap, no load. The version
        rolled back from becomes the previous one (a second rollback undoes it)."""
        start = time.perf_counter_ns()
        entry = self.entry(model)
        async with entry.lock:
            self.check_pin(entry, actor)
            self._check_expected(entry, expected_active)
            old, target = entry.serving.active, entry.serving.previous
            if old is None:
                raise FailedPreconditionError(f"model '{model}' has no active version")
            if target is None or target.phase is not Phase.READY:
                hint = " (--warm-versions is 1)" if self._warm_versions == 1 else ""
                raise FailedPreconditionError(
                    f"model '{model}' has no warm previous version to roll back to{hint}")
            swap_ns = self._swap(entry, target, previous=old)
            self.swapped(entry, old, actor)
            await self._journal.commit(self.events.make(
                model, "rollback", actor, reason, from_version=old.number,
                from_digest=old.digest, to_version=target.number, to_digest=target.digest,
                details=details))
            await self.notify(entry)
            dropped = self._evict(entry)
        self._retire(dropped)
        return SwapResult(model, old, target, swap_ns, time.perf_counter_ns() - start)

    def _swap(self, entry: ModelEntry, version: ModelVersion, *, previous: ModelVersion | None
              ) -> int:
        """The one assignment that changes what serves. Returns its duration in ns."""
        now = time.time()
        before = time.perf_counter_ns()
        loaded = dict(entry.serving.loaded)
        loaded[version.number] = version
        if previous is not None and previous is not version:
            loaded[previous.number] = previous
        else:
            previous = entry.serving.previous
        entry.serving = ServingState(version, previous, MappingProxyType(loaded))
        elapsed = time.perf_counter_ns() - before
        version.held = False
        version.activated_at = now
        if previous is not None:
            previous.deactivated_at = now
        return elapsed

    def _evict(self, entry: ModelEntry) -> list[ModelVersion]:
        """Keep the active, held and the warm-budget's most recent versions; take the
        rest out of serving and return them, for `_retire` once the lock is released."""
        serving = entry.serving
        kept = [v for v in (serving.previous,) if v is not None]
        others = sorted((v for v in serving.loaded.values()
                         if v is not serving.active and v is not serving.previous
                         and v is not serving.canary and v is not serving.shadow
                         and not v.held), key=lambda v: v.deactivated_at, reverse=True)
        budget = self._warm_versions - 1
        keep = set((kept + others)[:budget])
        drop = [v for v in kept + others if v not in keep]
        if drop:
            loaded = {n: v for n, v in serving.loaded.items() if v not in drop}
            previous = serving.previous if serving.previous in keep else None
            entry.serving = serving.but(previous=previous, loaded=MappingProxyType(loaded))
        return drop

    def _retire(self, versions: list[ModelVersion]) -> None:
        """Drain and close versions that left serving, in the background: a command
        never holds a model's lock while requests on an old version finish, so a
        rollback right after never waits for them."""
        for version in versions:
            leaving = self._loading.begin_unload(version)  # now, not when the task runs
            task = asyncio.get_running_loop().create_task(
                self._loading.finish_unload(version, leaving))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def unload(self, model: str, ref: str = "", *, actor: str, reason: str = "") -> None:
        """Unload one version (never the active one), or, with no `ref`, the whole
        model: it leaves serving at once, then each version drains and closes. The
        command returns once they are closed, but drains outside the model's lock."""
        entry = self.entry(model)
        version = await self.resolve(entry, ref) if ref else None
        async with entry.lock:
            serving = entry.serving
            if version is None:
                entry.serving, entry.unloaded = ServingState.empty(), True
                await self._journal.commit(self.events.make(model, "unload", actor, reason))
                await self.notify(entry)
                leaving = list(serving.loaded.values())
            else:
                if version is serving.active:
                    raise FailedPreconditionError(
                        f"{version.label} is active; activate another version or unload"
                        " the model")
                if serving.loaded.get(version.number) is version:
                    loaded = {n: v for n, v in serving.loaded.items() if v is not version}
                    entry.serving = serving.but(
                        previous=None if serving.previous is version else serving.previous,
                        canary=None if serving.canary is version else serving.canary,
                        shadow=None if serving.shadow is version else serving.shadow,
                        loaded=MappingProxyType(loaded))
                await self._journal.commit(self.events.make(
                    model, "unload", actor, reason, from_version=version.number,
                    from_digest=version.digest))
                leaving = [version]
        await asyncio.gather(*(self._loading.unload(v) for v in leaving))

    async def set_pinned(self, model: str, pinned: bool, *, actor: str, reason: str = "") -> None:
        entry = self.entry(model)
        async with entry.lock:
            entry.pinned = pinned
            await self._journal.commit(self.events.make(model, "pin" if pinned else "unpin", actor,
                                                reason))

    # ---- for the repository watcher ----------------------------------------------

    def facts(self, model: str) -> ModelFacts:
        entry = self._models.get(model)
        if entry is None:
            return ModelFacts()
        serving = entry.serving
        return ModelFacts(True, serving.active.number if serving.active else 0,
                          frozenset(serving.loaded), entry.pinned, entry.watermark,
                          entry.unloaded)

    async def raise_watermark(self, model: str, number: int) -> None:
        entry = self._models.get(model)
        if entry is not None and number > entry.watermark:
            entry.watermark = number
            await self._journal.persist()

    async def forget(self, model: str, *, actor: str, reason: str) -> None:
        """Drop a model whose folder is gone: unload it (after draining), forget it."""
        entry = self.entry(model)
        await self.unload(model, actor=actor, reason=reason)
        async with entry.lock:
            if self._models.get(model) is entry and not (self._repository / model).is_dir():
                del self._models[model]
                await self._journal.persist()
                await self.notify(entry)

    async def note(self, model: str, action: str, *, actor: str, reason: str,
                   version: int = 0, details: dict[str, str] | None = None) -> None:
        """Record an event that changes no serving state (a skip, a warning)."""
        await self._journal.record(self.events.make(model, action, actor, reason,
                                                    to_version=version, details=details))

    # ---- persistence and notification ----------------------------------------

    def _snapshot(self) -> SavedState:
        models: dict[str, SavedModel] = {}
        for entry in self._models.values():
            active, previous = entry.serving.active, entry.serving.previous
            if active is None and not entry.unloaded and not entry.pinned and not entry.guard:
                continue  # never served: the next start tries again from scratch
            models[entry.name] = SavedModel(
                VersionRef(active.number, active.digest) if active else None,
                VersionRef(previous.number, previous.digest) if previous else None,
                entry.pinned,
                entry.watermark,
                dict(entry.guard),
            )
        return SavedState(models, dict(self.quarantine))

    async def notify(self, entry: ModelEntry) -> None:
        ready = entry.serving.active is not None
        for listener in self._listeners:
            await listener(entry.name, ready)

    async def close(self) -> None:
        """Unload everything (after the servers stopped taking calls)."""
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for entry in self.entries():
            async with entry.lock:
                loaded = list(entry.serving.loaded.values())
                entry.serving = ServingState.empty()
            await asyncio.gather(*(self._loading.unload(v) for v in loaded))
        self._loading.close()
        self._journal.close()
        self.events.close()

    def describe(self) -> dict[str, Any]:
        return {"warm_versions": self._warm_versions, "models": len(self._models)}
