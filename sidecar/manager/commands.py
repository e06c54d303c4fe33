"""The commands that change what serves: activate, rollback, replace, load,
unload, pin, guard settings, quarantine.

Each runs its whole state change under the model's lock: it checks, changes
the serving state in one assignment, takes out what is beyond the budgets and
submits the journal write, all before the lock is released, so commands never
interleave halfway and the journal order is the swap order. It then awaits
durability *outside* the lock and is acknowledged only once the change is on
disk; a change that cannot be saved is undone (if nothing changed the model
since) and answered UNAVAILABLE. Versions taken out are retired (drained,
closed) only after that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.errors import FailedPreconditionError, NotFoundError, UnavailableError
from sidecar.manager.admission import Admission
from sidecar.manager.entry import ModelEntry, SwapResult
from sidecar.manager.fleethook import FleetSlot, Shared
from sidecar.manager.journal import Journal
from sidecar.manager.loading import VersionLoading
from sidecar.manager.refs import References
from sidecar.manager.residency import Leaving, Residency
from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion, Phase
from sidecar.state.events import Event, EventLog
from sidecar.state.store import VersionRef

#: Actors whose changes a pin blocks (a pinned model changes only by command).
AUTOMATIC_ACTORS = frozenset({"watcher", "guard"})
_ATTEMPTS = 3  # loads retried when a concurrent unload took the session meanwhile

#: Told (entry, the version active before, actor) right after a change of what
#: serves (activate, rollback, canary, shadow, abort); must not await.
SwapHook = Callable[[ModelEntry, "ModelVersion | None", str], None]


@dataclass(frozen=True, slots=True)
class Parts:
    """What commands work with, handed over explicitly by the manager."""

    journal: Journal
    events: EventLog
    loading: VersionLoading
    residency: Residency
    refs: References
    admission: Admission
    quarantine: dict[str, str]
    entry: Callable[[str], ModelEntry]  # an existing model (NotFoundError)
    entry_for: Callable[[str], ModelEntry]  # one that may exist only on disk
    notify: Callable[[ModelEntry], Awaitable[None]]
    swapped: SwapHook
    #: awaited before a version newly serves (the crash-loop guard's record); it
    #: returns how to undo that record if the change is then not made
    will_serve: Callable[[ModelEntry, ModelVersion], Awaitable[Callable[[], None]]]
    #: fleet mode: where shared changes are proposed first (see fleethook.py)
    fleet: FleetSlot


def _ref(version: ModelVersion | None) -> VersionRef | None:
    return VersionRef(version.number, version.digest) if version is not None else None


def shared(entry: ModelEntry, active: ModelVersion | None, previous: ModelVersion | None, *,
           pinned: bool | None = None, guard: dict[str, str] | None = None) -> Shared:
    """The model's shared state with these versions (and settings) in place."""
    return Shared(_ref(active), _ref(previous), entry.pinned if pinned is None else pinned,
                  dict(entry.guard if guard is None else guard),
                  max(entry.watermark, active.number if active is not None else 0))


def check_pin(entry: ModelEntry, actor: str) -> None:
    if entry.pinned and actor in AUTOMATIC_ACTORS:
        raise FailedPreconditionError(
            f"model '{entry.name}' is pinned: only an explicit command changes it")


class Change:
    """One model's change: events submitted under the lock, settled after it."""

    def __init__(self, parts: Parts, entry: ModelEntry) -> None:
        self._parts = parts
        self.entry = entry
        self.before = entry.serving
        self._pending: list[tuple[asyncio.Future[None], Event | None]] = []
        self.undo: Callable[[], None] | None = None
        self._taken: list[Leaving] = []
        #: the drains this change started, once it is durable
        self.retiring: list[asyncio.Task[None]] = []

    def drop(self, versions: list[ModelVersion]) -> None:
        """Versions this change takes out of serving: UNLOADING now (under the
        lock), drained and closed once the change is durable."""
        self._taken += self._parts.residency.take_out(versions)

    def submit(self, event: Event | None) -> None:
        self._pending.append((self._parts.journal.submit(event), event))

    async def settle(self) -> None:
        """Await durability (outside the lock); undo the change if it failed. Runs in
        a task of its own: a command whose caller is cancelled still finishes (or
        undoes) its change and retires what it took out."""
        await asyncio.shield(asyncio.get_running_loop().create_task(self._settle()))

    async def _settle(self) -> None:
        after = self.entry.serving
        failure: UnavailableError | None = None
        for pending, event in self._pending:  # every write: each is published or not
            try:
                await self._parts.journal.settle(pending, event)
            except UnavailableError as exc:
                failure = failure or exc
        if failure is None:
            self.retiring = self._parts.residency.finish(self._taken)
            return
        async with self.entry.lock:
            if self.entry.serving is after and self._restorable():
                self.entry.serving = self.before
                self._parts.residency.put_back(self._taken)
                # a version loaded only for this change has no place any more
                self._taken = self._parts.residency.take_out(
                    [v for v in after.loaded.values() if self.before.role(v) is None])
                if self.undo is not None:
                    self.undo()
                # the guard watches what serves again (its windows, probation)
                self._parts.swapped(self.entry, after.active, "sidecar")
                await self._parts.notify(self.entry)
                try:  # writes queued meanwhile carried the change: write the undo too
                    await self._parts.journal.commit(None)
                except UnavailableError:
                    pass  # still full: what is on disk is the state before
        self._parts.residency.finish(self._taken)
        raise failure

    def _restorable(self) -> bool:
        """Whether every version of the state before still has its open session."""
        taken = {id(v) for v, _ in self._taken}
        return all(v.servable is not None and not v.servable.closed
                   and (v.phase is Phase.READY or id(v) in taken)
                   for v in self.before.loaded.values())


class Commands:
    def __init__(self, parts: Parts) -> None:
        self._p = parts

    # ---- what serves -----------------------------------------------------------------

    async def _admitted(self, entry: ModelEntry, ref: str, actor: str, *, force: bool
                        ) -> ModelVersion:
        p = self._p
        if ref:
            version = await p.refs.resolve(entry, ref)
            await p.admission.prepare(version, actor, force=force)
            return version
        p.refs.refresh(entry)
        if not entry.versions:
            raise NotFoundError(f"model '{entry.name}' has no version folders")
        found = await p.loading.highest(entry.versions, actor)
        if found is None:
            raise FailedPreconditionError(f"no version of model '{entry.name}' can be loaded")
        return found

    def end_candidate(self, entry: ModelEntry, keep: ModelVersion | None, why: str,
                      change: Change) -> None:
        """End a running canary or shadow (unless it is `keep`), with an event."""
        serving = entry.serving
        candidate = serving.canary or serving.shadow
        if candidate is None:
            return
        kind = "canary" if candidate is serving.canary else "shadow"
        entry.serving = serving.but(canary=None, canary_weight=0.0, shadow=None)
        if candidate is keep:
            return
        entry.note = f"{kind} of version {candidate.number} ended: {why}"
        change.submit(self._p.events.make(
            entry.name, f"{kind}-superseded", "sidecar", why,
            from_version=candidate.number, from_digest=candidate.digest))

    async def activate(
        self, model: str, ref: str = "", *, actor: str, expected_active: str = "",
        force: bool = False, reason: str = "",
    ) -> SwapResult:
        """Make a version active: admitted first (off the lock), then swapped in one
        assignment. The old active version stays warm as the previous one; a
        running canary or shadow of another version ends (superseded)."""
        start = time.perf_counter_ns()
        p = self._p
        entry = p.entry_for(model)
        check_pin(entry, actor)
        p.refs.check_expected(entry, expected_active)
        for attempt in range(_ATTEMPTS):
            version = await self._admitted(entry, ref, actor, force=force)
            async with entry.lock:
                if version.phase is not Phase.READY and attempt + 1 < _ATTEMPTS:
                    continue  # unloaded between its load and the lock: load it again
                try:
                    check_pin(entry, actor)
                    p.refs.check_expected(entry, expected_active)
                    old = entry.serving.active
                    p.admission.check_compatible(version, old, force=force,
                                                 hint="force to activate anyway")
                    if old is not version:
                        previous = old if old is not None else entry.serving.previous
                        await p.fleet.hook.propose(
                            model, shared(entry, version, previous), actor=actor,
                            action="activate-forced" if force else "activate", reason=reason,
                            expected=expected_active)
                except Exception:
                    if entry.serving.role(version) is None:
                        p.residency.retire([version])  # loaded only for this activation
                    raise
                if old is version:
                    return SwapResult(model, old, version, 0, time.perf_counter_ns() - start)
                forget_serving = await p.will_serve(entry, version)  # before it answers
                change = Change(p, entry)
                self.end_candidate(entry, version, f"superseded by activate of version"
                                   f" {version.number} ({actor})", change)
                swap_ns = self._swap(entry, version, previous=old)
                unloaded, entry.unloaded = entry.unloaded, False

                def undo(unloaded: bool = unloaded,
                         forget_serving: Callable[[], None] = forget_serving) -> None:
                    entry.unloaded = unloaded
                    forget_serving()
                change.undo = undo
                p.swapped(entry, old, actor)
                change.drop(p.residency.evict(entry))
                change.submit(p.events.make(
                    model, "activate", actor, reason,
                    from_version=old.number if old else 0, from_digest=old.digest if old else "",
                    to_version=version.number, to_digest=version.digest,
                    details={**version.commit, **({"forced": "true"} if force else {})}))
                await p.notify(entry)
            await change.settle()
            return SwapResult(model, old, version, swap_ns, time.perf_counter_ns() - start)
        raise UnavailableError(f"model '{model}': the version was unloaded meanwhile; retry")

    async def rollback(
        self, model: str, *, actor: str, expected_active: str = "", force: bool = False,
        reason: str = "", details: dict[str, str] | None = None,
    ) -> SwapResult:
        """Swap back to the previous version: a pointer swap, no load. The version
        rolled back from becomes the previous one (a second rollback undoes it)."""
        start = time.perf_counter_ns()
        p = self._p
        entry = p.entry(model)
        async with entry.lock:
            check_pin(entry, actor)
            p.refs.check_expected(entry, expected_active)
            old, target = entry.serving.active, entry.serving.previous
            if old is None:
                raise FailedPreconditionError(f"model '{model}' has no active version")
            if target is None or target.phase is not Phase.READY:
                hint = " (--warm-versions is 1)" if p.residency.warm_versions == 1 else ""
                raise FailedPreconditionError(
                    f"model '{model}' has no warm previous version to roll back to{hint}")
            why = p.quarantine.get(target.digest, "")
            if why and not force:
                raise FailedPreconditionError(
                    f"the previous version {target.number} is quarantined ({why});"
                    " unquarantine it or use force")
            await p.fleet.hook.propose(model, shared(entry, target, old), actor=actor,
                                       action="rollback", reason=reason,
                                       expected=expected_active)
            change = Change(p, entry)
            self.end_candidate(entry, None, f"superseded by rollback to version"
                               f" {target.number} ({actor})", change)
            swap_ns = self._swap(entry, target, previous=old)
            p.swapped(entry, old, actor)
            change.drop(p.residency.evict(entry))
            change.submit(p.events.make(
                model, "rollback", actor, reason, from_version=old.number,
                from_digest=old.digest, to_version=target.number, to_digest=target.digest,
                details={**target.commit, **(details or {})}))
            await p.notify(entry)
        await change.settle()
        return SwapResult(model, old, target, swap_ns, time.perf_counter_ns() - start)

    @staticmethod
    def _swap(entry: ModelEntry, version: ModelVersion, *, previous: ModelVersion | None
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

    async def replace(self, model: str, number: int, *, actor: str, reason: str = ""
                      ) -> ModelVersion | None:
        """Serve the bytes now on disk for a loaded version whose file changed (a
        force-push, an edit): a fresh version of the same number is admitted off the
        lock (loads, warm-up, not quarantined, signature compatible with the active
        version) and takes the old one's place, in whatever role it had, in one
        assignment; the old session drains and closes. None if the bytes on disk
        turn out to be the loaded ones."""
        p = self._p
        entry = p.entry(model)
        old = entry.versions.get(number)
        if old is None or entry.serving.role(old) is None:
            raise FailedPreconditionError(f"model '{model}' version {number} is not loaded")
        fresh = ModelVersion(model, number, old.path, created=old.created)
        await p.admission.prepare(fresh, actor, force=False)
        if fresh.digest == old.digest:
            p.residency.retire([fresh])
            return None
        async with entry.lock:
            serving = entry.serving
            try:
                check_pin(entry, actor)
                if entry.versions.get(number) is not old or serving.role(old) is None:
                    raise FailedPreconditionError(
                        f"model '{model}' version {number} changed meanwhile; retry")
                p.admission.check_compatible(fresh, serving.active, force=False)
                if serving.active is old or serving.previous is old:
                    after = (fresh, serving.previous) if serving.active is old \
                        else (serving.active, fresh)
                    await p.fleet.hook.propose(model, shared(entry, *after), actor=actor,
                                               action="replace", reason=reason)
            except Exception:
                p.residency.retire([fresh])
                raise

            def swap(version: ModelVersion | None) -> ModelVersion | None:
                return fresh if version is old else version
            was_active = serving.active is old
            forget_serving = await p.will_serve(entry, fresh) if was_active else None
            change = Change(p, entry)
            loaded = dict(serving.loaded)
            loaded[number] = fresh
            entry.serving = serving.but(
                active=swap(serving.active), previous=swap(serving.previous),
                canary=swap(serving.canary), shadow=swap(serving.shadow),
                loaded=MappingProxyType(loaded))
            entry.versions[number] = fresh
            fresh.held, fresh.activated_at = old.held, old.activated_at
            fresh.deactivated_at = old.deactivated_at

            def undo() -> None:
                entry.versions[number] = old
                if forget_serving is not None:
                    forget_serving()
            change.undo = undo
            if was_active:
                p.swapped(entry, old, actor)
            change.drop([old])
            change.submit(p.events.make(
                model, "replace", actor, reason, from_version=number, from_digest=old.digest,
                to_version=number, to_digest=fresh.digest,
                details={"role": (serving.role(old) or "").lower(), **fresh.commit}))
            await p.notify(entry)
        await change.settle()
        return fresh

    # ---- what is loaded ----------------------------------------------------------------

    async def load(self, model: str, ref: str, *, actor: str, reason: str = "") -> ModelVersion:
        """Load and warm a version without activating it: it stays WARM (held) until
        activated or unloaded, within `--max-loaded`."""
        p = self._p
        entry = p.entry_for(model)
        for attempt in range(_ATTEMPTS):
            version = await self._admitted(entry, ref, actor, force=False)
            async with entry.lock:
                if version.phase is not Phase.READY:
                    if attempt + 1 < _ATTEMPTS:
                        continue
                    raise UnavailableError(f"{version.label} was unloaded meanwhile; retry")
                change = Change(p, entry)
                if entry.serving.role(version) is None:
                    version.held = True
                    loaded = dict(entry.serving.loaded)
                    loaded[version.number] = version
                    entry.serving = entry.serving.but(loaded=MappingProxyType(loaded))
                    change.drop(p.residency.evict(entry))
                change.submit(p.events.make(model, "load", actor, reason,
                                            to_version=version.number,
                                            to_digest=version.digest,
                                            details=dict(version.commit)))
                await p.notify(entry)
            await change.settle()
            return version
        raise AssertionError("unreachable")

    async def unload(self, model: str, ref: str = "", *, actor: str, reason: str = "") -> None:
        """Unload one version (never the active one), or, with no `ref`, the whole
        model: it leaves serving at once, then each version drains and closes."""
        p = self._p
        entry = p.entry(model)
        version = await p.refs.resolve(entry, ref) if ref else None
        async with entry.lock:
            serving = entry.serving
            change = Change(p, entry)
            if version is None:
                entry.serving, entry.unloaded = ServingState.empty(), True
                change.undo = lambda: setattr(entry, "unloaded", False)
                p.swapped(entry, serving.active, actor)  # nothing serves: the record says so
                change.drop(list(serving.loaded.values()))
                change.submit(p.events.make(model, "unload", actor, reason))
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
                        canary_weight=0.0 if serving.canary is version
                        else serving.canary_weight,
                        shadow=None if serving.shadow is version else serving.shadow,
                        loaded=MappingProxyType(loaded))
                    change.drop([version])
                change.submit(p.events.make(
                    model, "unload", actor, reason, from_version=version.number,
                    from_digest=version.digest))
            await p.notify(entry)
        await change.settle()
        # this unload's drains, not others'; a cancelled caller never cancels them
        await asyncio.shield(asyncio.gather(*change.retiring))

    # ---- settings of a model -----------------------------------------------------------

    async def set_pinned(self, model: str, pinned: bool, *, actor: str, reason: str = "") -> None:
        p = self._p
        entry = p.entry(model)
        async with entry.lock:
            serving = entry.serving
            await p.fleet.hook.propose(
                model, shared(entry, serving.active, serving.previous, pinned=pinned),
                actor=actor, action="pin" if pinned else "unpin", reason=reason)
            was, entry.pinned = entry.pinned, pinned
            change = Change(p, entry)
            change.undo = lambda: setattr(entry, "pinned", was)
            change.submit(p.events.make(model, "pin" if pinned else "unpin", actor, reason))
        await self._settle_setting(change, lambda: setattr(entry, "pinned", was))

    async def set_guard(self, model: str, overrides: dict[str, str], *, actor: str) -> None:
        """Replace the model's guard settings set by command (validated by the caller)."""
        p = self._p
        entry = p.entry(model)
        async with entry.lock:
            serving = entry.serving
            await p.fleet.hook.propose(
                model, shared(entry, serving.active, serving.previous, guard=overrides),
                actor=actor, action="guard-settings", reason="")
            was, entry.guard = entry.guard, dict(overrides)
            change = Change(p, entry)
            change.submit(p.events.make(model, "guard-settings", actor,
                                        details=dict(overrides)))
        await self._settle_setting(change, lambda: setattr(entry, "guard", was))

    @staticmethod
    async def _settle_setting(change: Change, undo: Callable[[], None]) -> None:
        """A setting changes no serving state: undo it whenever it was not saved."""
        try:
            await change.settle()
        except UnavailableError:
            async with change.entry.lock:
                undo()
            raise

    async def quarantine(self, model: str, ref: str, *, actor: str, reason: str) -> str:
        """Quarantine a version's digest (by version number or digest prefix)."""
        p = self._p
        entry = p.entry(model)
        version = await p.refs.resolve(entry, ref)
        digest = version.digest or ((await p.loading.identify(version)) or version).digest
        if not digest:
            raise NotFoundError(f"{version.label} has no readable file to quarantine")
        async with entry.lock:
            await p.fleet.hook.mark(model, digest, reason or f"quarantined by {actor}",
                                    actor=actor)
            was = p.quarantine.get(digest)
            p.quarantine[digest] = reason or f"quarantined by {actor}"
            change = Change(p, entry)
            change.submit(p.events.make(model, "quarantine", actor, reason,
                                        to_version=version.number, to_digest=digest))

        def undo() -> None:
            if was is None:
                p.quarantine.pop(digest, None)
            else:
                p.quarantine[digest] = was
        await self._settle_setting(change, undo)
        return digest
