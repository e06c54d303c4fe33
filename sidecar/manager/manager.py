"""ModelManager: which versions exist, which are loaded, which one serves.

The one place that moves versions between the sets on disk / loaded / serving,
as a facade over parts with one job each:

- the request path (here): `acquire` reads a model's immutable serving state
  once and returns the chosen version's `Servable`, which carries everything
  the request needs; the caller `release()`s it;
- `refs.References`: naming versions; `admission.Admission`: the one check a
  version passes before it may serve;
- `commands.Commands` and `candidates.Candidates`: each change of a model
  under its lock, journaled in swap order, acknowledged once durable;
- `residency.Residency`: warm budget, `--max-loaded`, drain and close;
- `restore.Restorer` and `crashwatch.CrashWatch`: what serves after a start,
  crash loops included; `journal.Journal`: the state file and event log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from sidecar.errors import InvalidInputError, NotFoundError, UnavailableError
from sidecar.loader.onnx import FileIdentity, SessionConfig, load
from sidecar.manager.admission import Admission
from sidecar.manager.candidates import Candidates
from sidecar.manager.commands import Commands, Parts, SwapHook
from sidecar.manager.crashwatch import CrashWatch
from sidecar.manager.entry import ModelEntry, SwapResult
from sidecar.manager.fleethook import ADOPTED, FleetSlot
from sidecar.manager.journal import Journal
from sidecar.manager.loading import Loader, VersionLoading
from sidecar.manager.plan import ModelFacts
from sidecar.manager.refs import References
from sidecar.manager.residency import Residency
from sidecar.manager.restore import Restorer
from sidecar.manager.servable import Servable
from sidecar.manager.version import ModelVersion
from sidecar.source.repository import model_name_problem, parse_version, scan_repository
from sidecar.state.events import EventLog
from sidecar.state.rebuild import rebuild
from sidecar.state.store import SavedModel, SavedState, StateStore, VersionRef

log = logging.getLogger("sidecar.manager")

#: Told (model name, has a serving version) after every change of a model.
ReadinessListener = Callable[[str, bool], Awaitable[None]]


class ModelManager:
    def __init__(
        self,
        repository: Path,
        config: SessionConfig,
        *,
        store: StateStore | None = None,
        events: EventLog | None = None,
        warm_versions: int = 2,
        max_loaded: int = 4,
        load_threads: int = 2,
        loader: Loader = load,
        crash_window_s: float = 120.0,
        crash_limit: int = 2,
        batching: Callable[[Servable], Any] | None = None,
    ) -> None:
        self._repository = repository
        self._store = store
        self.events = events or EventLog(None)
        self._models: dict[str, ModelEntry] = {}
        self._listeners: list[ReadinessListener] = []
        self._swap_hooks: list[SwapHook] = []
        self.quarantine: dict[str, str] = {}  # digest -> why
        self.loading = VersionLoading(config, loader, load_threads,
                                      on_failure=self._load_failed, quarantine=self.quarantine,
                                      batching=batching)
        self.journal = Journal(store, self.events, self._snapshot)
        self.residency = Residency(self.loading, warm_versions=warm_versions,
                                   max_loaded=max_loaded)
        self.refs = References(repository, self.loading.identify)
        self.crashes = CrashWatch(store.directory if store else None, self.journal,
                                  window_s=crash_window_s, limit=crash_limit)
        #: fleet mode: set by `join_fleet` (fleethook.py)
        self.fleet = FleetSlot()
        parts = Parts(self.journal, self.events, self.loading, self.residency, self.refs,
                      Admission(self.loading, self.quarantine), self.quarantine, self.entry,
                      self._entry_for, self.notify, self._swapped, self._will_serve,
                      self.fleet)
        self.commands = Commands(parts)
        self.candidates = Candidates(parts, self.commands)
        self.started = False

    # ---- the request path ----------------------------------------------------------------

    def acquire(self, model: str, version: str = "") -> Servable:
        """A handle on the session a request names (or the active one's, or the
        canary's for its share); the caller must `release()` it."""
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model[:200]}'")
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
        servable = chosen.servable
        assert servable is not None  # a version in the serving state is loaded
        servable.inflight += 1
        return servable

    def acquire_reference(self, handle: Servable) -> Servable | None:
        """A handle on the version `handle`'s version is judged against (the warm
        previous one for the active version, the active one for a candidate), or
        None; the caller must `release()` it."""
        entry = self._models.get(handle.model)
        if entry is None:
            return None
        serving = entry.serving
        active = serving.active
        if active is not None and active.servable is handle:
            other = serving.previous
        else:
            other = active
        servable = other.servable if other is not None else None
        if servable is None or servable is handle or servable.closed:
            return None
        servable.inflight += 1
        return servable

    def _why_not_loaded(self, entry: ModelEntry, text: str, number: int | None
                        ) -> NotFoundError | UnavailableError:
        known = entry.versions.get(number) if number is not None else None
        if known is None:
            return NotFoundError(f"model '{entry.name}' has no version '{text[:40]}'")
        return UnavailableError(f"model '{entry.name}' version {number} is not loaded"
                                f" (state {entry.state_of(known)})")

    # ---- queries -------------------------------------------------------------------------

    def entry(self, model: str) -> ModelEntry:
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model[:200]}'")
        return entry

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

    def add_swap_hook(self, hook: SwapHook) -> None:
        self._swap_hooks.append(hook)

    @property
    def warm_versions(self) -> int:
        return self.residency.warm_versions

    async def identify(self, version: ModelVersion) -> FileIdentity | None:
        return await self.loading.identify(version)

    async def resolve(self, entry: ModelEntry, ref: str) -> ModelVersion:
        return await self.refs.resolve(entry, ref)

    async def retired(self, within: float | None = None) -> bool:
        """Wait until versions that left serving have drained and closed."""
        return await self.residency.retired(within)

    def _entry_for(self, model: str) -> ModelEntry:
        entry = self._models.get(model)
        if entry is not None:
            return entry
        problem = model_name_problem(model)
        if problem:
            raise InvalidInputError(problem)  # never a path: '..', '/abs', 'a/1', ''
        if not (self._repository / model).is_dir():
            raise NotFoundError(f"no model '{model[:200]}' in the repository")
        return self._models.setdefault(model, ModelEntry(model))

    # ---- hooks ------------------------------------------------------------------------------

    async def _will_serve(self, entry: ModelEntry, version: ModelVersion
                          ) -> Callable[[], None]:
        before = self.crashes.current(entry.name)
        await self.crashes.will_serve(entry.name, version.number, version.digest)
        return partial(self.crashes.put_back, entry.name, before)

    def _swapped(self, entry: ModelEntry, before: ModelVersion | None, actor: str) -> None:
        """After a change of what serves (also an unload of the whole model)."""
        active = entry.serving.active
        if active is not None and active is not before:
            self.crashes.serving(entry.name, active.number, active.digest)
        elif active is None:
            self.crashes.not_serving(entry.name)
        for hook in self._swap_hooks:
            hook(entry, before, actor)

    async def _load_failed(self, version: ModelVersion, actor: str, reason: str) -> None:
        log.warning("load failed", extra={"model": version.model, "version": version.number,
                                          "reason": reason})
        await self.journal.record(self.events.make(
            version.model, "load-failed", actor, reason, to_version=version.number,
            to_digest=version.identity.digest if version.identity else ""))

    async def notify(self, entry: ModelEntry) -> None:
        ready = entry.serving.active is not None
        for listener in self._listeners:
            await listener(entry.name, ready)

    # ---- startup -------------------------------------------------------------------------

    async def start(self, adopt: SavedState | None = None) -> None:
        """Restore the saved serving state for every model on disk (see `restore`),
        after the crash-loop rule has quarantined what crashed the process. `adopt`
        (a fleet's state) takes the place of what was saved for the models it names,
        and its quarantine is added to the saved one."""
        saved = self._saved_state()
        if adopt is not None:
            saved = _adopted(saved, adopt)
        self.quarantine.clear()
        self.quarantine.update(saved.quarantine)
        verdicts = await self.crashes.begin()
        for verdict in verdicts:
            self.quarantine[verdict.digest] = verdict.reason
            await self.journal.record(self.events.make(
                verdict.model, "crash-loop", "startup", verdict.reason,
                from_version=verdict.version, from_digest=verdict.digest,
                details={"count": str(verdict.count),
                         "times": ",".join(f"{t:.0f}" for t in verdict.times)}))
        for name, versions in scan_repository(self._repository).items():
            entry = ModelEntry(name)
            for number, disk in versions.items():
                entry.versions[number] = ModelVersion(name, number, disk.path)
            saved_model = saved.models.get(name, SavedModel())
            entry.pinned, entry.watermark = saved_model.pinned, saved_model.watermark
            entry.guard = dict(saved_model.guard)
            entry.probation_until = saved_model.probation_until
            entry.declared = saved_model.declared
            entry.kept = saved.models.get(name)
            self._models[name] = entry
        restorer = Restorer(self.loading, self.journal, self.events,
                            warm_versions=self.warm_versions, quarantine=self.quarantine,
                            notify=self.notify, will_serve=self._will_serve)
        await asyncio.gather(*(self._restore(restorer, e, saved.models.get(e.name))
                               for e in self._models.values()))
        for entry in self._models.values():
            active = entry.serving.active
            if active is None:
                continue
            if not entry.watermark:
                # What a first start serves is not "new" to the watcher; versions
                # above it (they failed to load) are, and are retried on change.
                entry.watermark = active.number
        try:
            await self.journal.persist()
        except UnavailableError as exc:  # a full disk: serve anyway, and say so
            log.error("serving state not saved at start", extra={"reason": str(exc)})
        self.started = True

    async def _restore(self, restorer: Restorer, entry: ModelEntry,
                       saved: SavedModel | None) -> None:
        """One model's restore; whatever goes wrong is that model's problem only."""
        try:
            await restorer.restore(entry, saved)
        except Exception as exc:
            log.exception("restore failed", extra={"model": entry.name})
            await self.journal.record(self.events.make(
                entry.name, "restore-failed", "startup", f"restore failed: {exc}"[:500]))

    def _saved_state(self) -> SavedState:
        if self._store is None:
            return SavedState()
        saved = self._store.load()
        mine = str(self._repository.absolute())
        if self._store.damaged:
            saved = rebuild(self.events.history(), mine)
            log.error("state rebuilt from the event log",
                      extra={"models": sorted(saved.models), "quarantined": len(saved.quarantine)})
        if saved.repository and saved.repository != mine:
            self._store.set_aside(
                "other-repository",
                f"the state in {self._store.directory} was written for the model repository"
                f" {saved.repository}, not {mine}; set aside, starting without saved state"
                " (give each repository its own --state-dir)")
            return SavedState()
        return saved

    # ---- commands (see commands.py and candidates.py) --------------------------------

    async def load(self, model: str, ref: str, *, actor: str, reason: str = "") -> ModelVersion:
        return await self.commands.load(model, ref, actor=actor, reason=reason)

    async def activate(self, model: str, ref: str = "", *, actor: str, expected_active: str = "",
                       force: bool = False, reason: str = "") -> SwapResult:
        return await self.commands.activate(model, ref, actor=actor,
                                            expected_active=expected_active, force=force,
                                            reason=reason)

    async def rollback(self, model: str, *, actor: str, expected_active: str = "",
                       force: bool = False, reason: str = "",
                       details: dict[str, str] | None = None) -> SwapResult:
        return await self.commands.rollback(model, actor=actor, expected_active=expected_active,
                                            force=force, reason=reason, details=details)

    async def unload(self, model: str, ref: str = "", *, actor: str, reason: str = "") -> None:
        await self.commands.unload(model, ref, actor=actor, reason=reason)

    async def set_pinned(self, model: str, pinned: bool, *, actor: str, reason: str = "") -> None:
        await self.commands.set_pinned(model, pinned, actor=actor, reason=reason)

    async def set_guard(self, model: str, overrides: dict[str, str], *, actor: str) -> None:
        await self.commands.set_guard(model, overrides, actor=actor)

    async def quarantine_version(self, model: str, ref: str, *, actor: str, reason: str) -> str:
        return await self.commands.quarantine(model, ref, actor=actor, reason=reason)

    async def quarantine_digest(self, digest: str, reason: str, *, actor: str,
                                model: str = "") -> bool:
        """Quarantine bytes by digest (the fleet's marks); False if they were already."""
        if digest in self.quarantine:
            return False
        self.quarantine[digest] = reason
        try:
            await self.journal.commit(self.events.make(model, "quarantine", actor, reason,
                                                       to_digest=digest))
        except Exception:
            self.quarantine.pop(digest, None)
            raise
        return True

    async def unquarantine(self, prefix: str, *, actor: str, reason: str = "") -> str:
        digest = await self.candidates.unquarantine(prefix, actor=actor, reason=reason)
        self.crashes.forgive(digest)
        return digest

    # ---- for the repository watcher ----------------------------------------------------

    def facts(self, model: str) -> ModelFacts:
        entry = self._models.get(model)
        if entry is None:
            return ModelFacts()
        serving = entry.serving
        return ModelFacts(True, serving.active.number if serving.active else 0,
                          frozenset(serving.loaded), entry.pinned, entry.watermark,
                          entry.unloaded, serving.previous.number if serving.previous else 0,
                          entry.declared)

    async def raise_watermark(self, model: str, number: int) -> None:
        entry = self._models.get(model)
        if entry is not None and number > entry.watermark:
            entry.watermark = number
            await self.journal.persist()

    async def set_watermark(self, model: str, number: int) -> None:
        """Set the highest version handled, lower too (a version removed from the
        repository is new again when it comes back)."""
        entry = self._models.get(model)
        if entry is not None and number != entry.watermark:
            entry.watermark = number
            await self.journal.persist()

    async def set_declared(self, model: str, text: str) -> None:
        """Record the `serve` declaration as applied (persisted)."""
        entry = self._models.get(model)
        if entry is not None and text != entry.declared:
            entry.declared = text
            await self.journal.persist()

    async def replace(self, model: str, number: int, *, actor: str, reason: str = ""
                      ) -> ModelVersion | None:
        return await self.commands.replace(model, number, actor=actor, reason=reason)

    async def forget(self, model: str, *, actor: str, reason: str) -> None:
        """Drop a model whose folder is gone: unload it (after draining), forget it."""
        entry = self.entry(model)
        await self.unload(model, actor=actor, reason=reason)
        async with entry.lock:
            if self._models.get(model) is entry and not (self._repository / model).is_dir():
                del self._models[model]
                await self.journal.persist()
                await self.notify(entry)

    async def note(self, model: str, action: str, *, actor: str, reason: str,
                   version: int = 0, details: dict[str, str] | None = None,
                   from_version: int = 0, from_digest: str = "", to_digest: str = "") -> None:
        """Record an event that changes no serving state (a skip, a warning, a
        proposal: `from_*` and `to_*` name the versions it is about)."""
        await self.journal.record(self.events.make(
            model, action, actor, reason, from_version=from_version, from_digest=from_digest,
            to_version=version, to_digest=to_digest, details=details))

    # ---- persistence and shutdown ------------------------------------------------------

    def _snapshot(self) -> SavedState:
        models: dict[str, SavedModel] = {}
        for entry in self._models.values():
            serving = entry.serving
            active, previous = serving.active, serving.previous
            candidate = serving.canary or serving.shadow
            if active is None and not entry.unloaded and entry.kept is not None:
                # not restored (yet): keep what was saved, as commands left it
                models[entry.name] = replace(entry.kept, pinned=entry.pinned,
                                             watermark=entry.watermark,
                                             guard=dict(entry.guard), candidate=None,
                                             declared=entry.declared)
                continue
            if (active is None and not entry.unloaded and not entry.pinned and not entry.guard
                    and not entry.declared):
                continue  # never served: the next start tries again from scratch
            models[entry.name] = SavedModel(
                VersionRef(active.number, active.digest) if active else None,
                VersionRef(previous.number, previous.digest) if previous else None,
                entry.pinned,
                entry.watermark,
                dict(entry.guard),
                entry.unloaded,
                entry.probation_until if active is not None else 0.0,
                ("canary" if candidate is serving.canary else "shadow",
                 VersionRef(candidate.number, candidate.digest)) if candidate else None,
                entry.declared,
            )
        return SavedState(models, dict(self.quarantine), str(self._repository.absolute()),
                          self.events.last_seq)

    async def close(self, grace: float = 20.0) -> None:
        """Unload everything (after the servers stopped taking calls); every drain
        waits at most `grace` seconds. Marks the stop as clean for the crash guard."""
        if self.crashes.began:  # an orderly end, even of a start that failed
            await self.crashes.stopped_cleanly()
        await self.residency.close(self.entries(), grace)
        self.loading.close()
        self.journal.close()
        self.events.close()


def _adopted(saved: SavedState, fleet: SavedState) -> SavedState:
    """The saved state with a fleet's models and quarantine in place: what serves,
    the pin, guard settings and the watermark come from the fleet; what only this
    replica knows (unloaded by command, probation, a declaration) stays."""
    models = dict(saved.models)
    for name, shared in fleet.models.items():
        mine = models.get(name, SavedModel())
        models[name] = replace(mine, active=shared.active, previous=shared.previous,
                               pinned=shared.pinned, guard=dict(shared.guard),
                               watermark=max(mine.watermark, shared.watermark),
                               candidate=None,
                               probation_until=mine.probation_until
                               if mine.active == shared.active else 0.0,
                               declared=mine.declared or ADOPTED)
    return replace(saved, models=models, quarantine={**saved.quarantine, **fleet.quarantine})
