"""A replica's link to its fleet: publish shared changes, converge on the others'.

What it owns (docs/fleet.md):

- **Publishing.** As the manager's `FleetHook`: a command's (or the watcher's)
  change of a model's shared state is written with compare-and-swap on the
  record's etcd revision as this replica last saw it: a lost swap is a
  `FleetConflictError` with what the fleet says now; etcd unreachable is a
  `FleetUnavailableError` at once, and nothing changed. The guard's decisions were
  already made locally; they are queued and published by a background task,
  again and again until etcd takes them, unless the fleet moved on meanwhile.
- **Converging.** One watch of the fleet's prefix (gap-free: see
  `sidecar.fleet.etcd`) keeps a copy of every record; after each update, each
  model whose record changed is brought to it through the manager's commands as
  actor `fleet` (a load and warm-up if needed, then the usual swap and drain).
  Quarantine marks are applied first, so no replica converges onto bytes another
  one just quarantined. A replica that cannot reach the fleet's target keeps
  what it serves and reports why, without blocking the others.
- **Membership.** A leased key per replica says what it serves per model, and
  why not the fleet's target if it does not; re-registered with a new lease if
  the lease is lost; revoked on a clean stop.
- **Adoption.** At start, the fleet's state replaces the saved one for the models
  it names (`adopt`), so a new replica serves what the fleet serves, not the
  newest version on its disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.errors import (
    FleetConflictError,
    FleetUnavailableError,
    NotFoundError,
    SidecarError,
)
from sidecar.fleet.etcd import (
    Changes,
    EtcdClient,
    EtcdError,
    EtcdOptions,
    EventType,
    KeyValue,
    Lease,
    Watch,
)
from sidecar.fleet.record import (
    FleetModel,
    Member,
    MemberModel,
    Origin,
    QuarantineMark,
    member_key,
    model_key,
    parse_key,
    prefix,
    quarantine_key,
)
from sidecar.manager.fleethook import FLEET_ACTOR, Shared
from sidecar.manager.manager import ModelManager
from sidecar.state.store import SavedModel, SavedState

log = logging.getLogger("sidecar.fleet")

#: Actors whose changes are made locally first and published afterwards.
LOCAL_FIRST = frozenset({"guard"})
#: Changes of a model's settings only: the fleet's versions are kept as they are.
SETTINGS_ONLY = frozenset({"pin", "unpin", "guard-settings"})
#: The action of a forced activation: replicas converge on it with force too.
FORCED = "activate-forced"
#: How often each replica checks that it serves what the fleet says (a replica
#: that could not follow, a change undone here, a version that arrived late).
RECONCILE_S = 2.0
_RETRY_S = 0.5  # pause before publishing queued decisions again


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What `ctl fleet` shows."""

    fleet: str
    replica: str
    connected: bool
    members: tuple[Member, ...]
    models: tuple[tuple[str, FleetModel], ...]
    quarantine: tuple[tuple[str, QuarantineMark], ...]
    pending: int  # decisions made locally, not yet published
    errors: tuple[tuple[str, str], ...]  # model -> why this replica does not follow


class FleetLink:
    def __init__(self, manager: ModelManager, options: EtcdOptions, *, fleet: str,
                 replica: str, lease_s: int = 10,
                 on_guard: Callable[[str], object] | None = None) -> None:
        self._manager = manager
        self._client = EtcdClient(options)
        self._deadline = options.deadline
        self.fleet, self.replica = fleet, replica
        self._lease_s = lease_s
        self._on_guard = on_guard
        self.address = self.control_address = ""
        self._started = time.time()
        #: the fleet as last seen: model -> (record, mod_revision); digest -> mark
        self.records: dict[str, tuple[FleetModel, int]] = {}
        self.marks: dict[str, QuarantineMark] = {}
        self.members: dict[str, Member] = {}
        self.errors: dict[str, str] = {}
        self._revision = 0  # the revision the copy above is as of (0: none yet)
        #: local decisions waiting to be published: model -> record; digest -> mark
        #: (None: lift the quarantine)
        self._pending: dict[str, FleetModel] = {}
        #: the record revision each queued decision was made on
        self._based: dict[str, int] = {}
        self._pending_marks: dict[str, QuarantineMark | None] = {}
        #: digests whose mark a command here is writing (see `mark`)
        self._own_marks: set[str] = set()
        self._wake = asyncio.Event()
        self._member_dirty = asyncio.Event()
        self._converging: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lease: Lease | None = None
        self._watching: Watch | None = None
        self._seen_up = False  # the watch has delivered something at least once

    # ---- start and stop ----------------------------------------------------------------

    async def adopt(self) -> SavedState | None:
        """The fleet's state as a saved state, to start from (None: etcd cannot be
        reached now; the replica starts from its own state and converges later)."""
        try:
            snapshot = await self._client.get_prefix(prefix(self.fleet))
        except EtcdError as exc:
            log.error("fleet state not read at start: serving the local state until"
                      " etcd can be reached", extra={"fleet": self.fleet, "reason": str(exc)})
            return None
        self._load(snapshot.items)
        self._revision = snapshot.revision
        models = {name: SavedModel(rec.active, rec.previous, rec.pinned, rec.watermark,
                                   dict(rec.guard))
                  for name, (rec, _) in self.records.items()}
        quarantine = {digest: mark.reason for digest, mark in self.marks.items()}
        log.info("fleet state adopted", extra={"fleet": self.fleet, "models": sorted(models),
                                               "quarantined": len(quarantine)})
        return SavedState(models, quarantine)

    def start(self, *, address: str, control_address: str) -> None:
        """Join: watch the fleet, register, publish queued decisions (background)."""
        self.address, self.control_address = address, control_address
        self._manager.fleet.hook = self
        self._manager.add_listener(self._changed)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(), name="fleet-watch"),
                       loop.create_task(self._register(), name="fleet-member"),
                       loop.create_task(self._publish(), name="fleet-publish"),
                       loop.create_task(self._reconcile(), name="fleet-reconcile")]

    async def close(self) -> None:
        """Leave: revoke the membership (peers see it at once), stop the tasks."""
        for task in [*self._tasks, *self._converging.values()]:
            task.cancel()
        for task in [*self._tasks, *self._converging.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lease is not None:
            with contextlib.suppress(EtcdError):
                await asyncio.wait_for(self._lease.close(), self._deadline)
        await self._client.close()

    # ---- the manager's hook ----------------------------------------------------------

    async def propose(self, model: str, after: Shared, *, actor: str, action: str,
                      reason: str, expected: str = "") -> None:
        if actor == FLEET_ACTOR:
            return
        known = self.records.get(model)
        if expected and known is not None and not _names(expected, known[0]):
            raise FleetConflictError(
                f"model '{model}': expected active '{expected[:80]}', but"
                f" {describe(known[0])}")
        origin = Origin(self.replica, actor, action, reason[:1024], time.time())
        record = FleetModel(after.active, after.previous, after.pinned, dict(after.guard),
                            after.watermark, origin)
        if action in SETTINGS_ONLY and known is not None:
            # a pin or guard settings: what the fleet serves stays what it is, even if
            # this replica does not serve it (it is diverged)
            record = FleetModel(known[0].active, known[0].previous, after.pinned,
                                dict(after.guard), known[0].watermark, origin)
        if actor in LOCAL_FIRST:
            # published later, against the record this decision was made on
            based = self._based.get(model) if model in self._pending else None
            self._pending[model] = record
            self._based[model] = based if based is not None else (
                self.records.get(model, (None, 0))[1])
            self._wake.set()
            return
        current, revision = self.records.get(model, (None, 0))
        if current is not None and current.same_state(record):
            return
        self._check_connected()
        key = model_key(self.fleet, model)
        try:
            result = await self._client.swap(key, record.to_json(), revision,
                                             deadline=self._deadline)
        except EtcdError as exc:
            raise FleetUnavailableError(
                f"the fleet's store (etcd) cannot be reached ({exc}): nothing changed, on"
                " this replica or any other; retry when it is back") from exc
        if not result.ok:
            now = self._remember(model, result.current)
            raise FleetConflictError(
                f"model '{model}' changed in the fleet meanwhile: {describe(now)}; look"
                " again (sidecar ctl fleet) and retry")
        self.records[model] = (record, result.current.mod_revision if result.current else 0)

    async def mark(self, model: str, digest: str, reason: str, *, actor: str,
                   lift: bool = False) -> None:
        if actor == FLEET_ACTOR:
            return
        mark = None if lift else QuarantineMark(
            reason[:1024], model, Origin(self.replica, actor, "unquarantine" if lift
                                         else "quarantine", "", time.time()))
        if actor in LOCAL_FIRST:
            self._pending_marks[digest] = mark
            self._wake.set()
            return
        self._check_connected()
        # the command changes this replica itself: its own write, coming back through
        # the watch, must not be applied a second time (nor race the command)
        self._own_marks.add(digest)
        try:
            await self._write_mark(digest, mark)
            if lift:  # its echo, if still to come, no longer finds the mark: not a lift
                self._own_marks.discard(digest)
        except EtcdError as exc:
            self._own_marks.discard(digest)
            raise FleetUnavailableError(
                f"the fleet's store (etcd) cannot be reached ({exc}): nothing changed, on"
                " this replica or any other; retry when it is back") from exc

    def _check_connected(self) -> None:
        """Fail at once, not after the deadline, while the watch knows etcd is away."""
        if self._seen_up and not self.connected:
            raise FleetUnavailableError(
                "the fleet's store (etcd) cannot be reached (this replica's watch of it is"
                " down): nothing changed, on this replica or any other; retry when it is"
                " back")

    async def _write_mark(self, digest: str, mark: QuarantineMark | None) -> None:
        key = quarantine_key(self.fleet, digest)
        if mark is None:
            await self._client.delete(key, deadline=self._deadline)
            self.marks.pop(digest, None)
        else:
            await self._client.put(key, mark.to_json(), deadline=self._deadline)
            self.marks[digest] = mark

    # ---- what the fleet says ---------------------------------------------------------

    def _remember(self, model: str, kv: KeyValue | None) -> FleetModel | None:
        if kv is None:
            self.records.pop(model, None)
            return None
        try:
            record = FleetModel.from_json(kv.value)
        except (ValueError, TypeError) as exc:
            log.warning("fleet record ignored", extra={"model": model, "reason": str(exc)})
            return None
        self.records[model] = (record, kv.mod_revision)
        return record

    def _load(self, items: tuple[KeyValue, ...]) -> None:
        self.records.clear()
        self.marks.clear()
        self.members.clear()
        for kv in items:
            self._put(kv)

    def _put(self, kv: KeyValue) -> tuple[str, str]:
        kind, name = parse_key(self.fleet, kv.key)
        try:
            if kind == "models":
                self._remember(name, kv)
            elif kind == "quarantine":
                self.marks[name] = QuarantineMark.from_json(kv.value)
            elif kind == "members":
                self.members[name] = Member.from_json(kv.value)
        except (ValueError, TypeError) as exc:
            log.warning("fleet key ignored", extra={"key": kv.key, "reason": str(exc)})
        return kind, name

    async def _watch(self) -> None:
        """The watch, restarted after a failure retrying cannot fix (a permission
        taken away): logged, then listed again after a pause."""
        while True:
            try:
                await self._watch_once()
            except Exception as exc:  # EtcdError (permission, auth) or a bug: keep trying
                log.error("fleet watch failed; starting it again",
                          extra={"fleet": self.fleet, "reason": str(exc)[:500]})
                self._revision = 0  # list again: changes may have been missed
                await asyncio.sleep(_RETRY_S * 4)  # a retry pause, not a wait for an event

    async def _watch_once(self) -> None:
        start = self._revision + 1 if self._revision else 0
        async with self._client.watch_prefix(prefix(self.fleet), start_revision=start) as watch:
            self._watching = watch
            up = asyncio.get_running_loop().create_task(watch.connected.wait())
            up.add_done_callback(lambda _: setattr(self, "_seen_up", True))
            async for update in watch:
                self._seen_up = True
                self._revision = update.revision
                lifted: list[str] = []
                if isinstance(update, Changes):
                    changed: set[str] = set()
                    for event in update.events:
                        if event.type is EventType.PUT:
                            kind, name = self._put(event.kv)
                        else:
                            kind, name = parse_key(self.fleet, event.kv.key)
                            if kind == "models":
                                self.records.pop(name, None)
                            elif kind == "quarantine" and name in self.marks:
                                del self.marks[name]
                                lifted.append(name)
                            elif kind == "members":
                                self.members.pop(name, None)
                        if kind == "models":
                            changed.add(name)
                else:  # a full listing: every model is looked at again
                    before = set(self.marks)
                    self._load(update.items)
                    lifted = sorted(before - set(self.marks))  # lifted while we were away
                    changed = set(self.records)
                    self._member_dirty.set()  # our key may be gone (a compaction, a restart)
                    self._wake.set()
                await self._apply_marks(lifted)
                if lifted:  # a version may serve again where it could not
                    changed |= set(self.records)
                for model in sorted(changed):
                    self._converge_soon(model)

    async def _apply_marks(self, lifted: list[str]) -> None:
        """The fleet's quarantine, here: marks added, lifted ones removed."""
        for digest, mark in list(self.marks.items()):
            if digest in self._pending_marks or digest in self._own_marks:
                self._own_marks.discard(digest)
                continue
            try:
                if await self._manager.quarantine_digest(
                        digest, mark.reason or "quarantined in the fleet", actor=FLEET_ACTOR,
                        model=mark.model):
                    log.info("fleet quarantine applied", extra={"digest": digest[:12]})
            except SidecarError as exc:
                log.warning("fleet quarantine not applied", extra={"reason": str(exc)})
        for digest in lifted:
            if digest in self._own_marks:
                self._own_marks.discard(digest)
                continue
            if digest in self._manager.quarantine and digest not in self._pending_marks:
                with contextlib.suppress(SidecarError):
                    await self._manager.unquarantine(digest, actor=FLEET_ACTOR,
                                                     reason="lifted in the fleet")

    # ---- converging ---------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Every RECONCILE_S, converge each model that does not serve the fleet's
        version (or is reported as not following): a version that arrived late, a
        change undone here after the fleet took it, a restore that fell back."""
        while True:
            for model, (record, _) in list(self.records.items()):
                if not self._manager.has_model(model) or model in self._pending:
                    continue
                active = self._manager.entry(model).serving.active
                differs = record.active is not None and (
                    active is None or active.digest != record.active.digest)
                if differs or model in self.errors:
                    self._converge_soon(model)
            await asyncio.sleep(RECONCILE_S)  # a period, not a wait for an event

    def _converge_soon(self, model: str) -> None:
        """Converge `model` in a task of its own (one at a time per model; a change
        while it runs makes it run again)."""
        task = self._converging.get(model)
        if task is not None and not task.done():
            self._again.add(model)
            return
        task = asyncio.get_running_loop().create_task(self._converge_loop(model))
        self._converging[model] = task

    async def _converge_loop(self, model: str) -> None:
        while True:
            self._again.discard(model)
            try:
                await self.converge(model)
            except Exception:
                log.exception("fleet convergence failed", extra={"model": model})
            if model not in self._again:
                return

    async def converge(self, model: str) -> None:
        """Bring this replica's `model` to the fleet's record of it."""
        found = self.records.get(model)
        m = self._manager
        if found is None or not m.has_model(model):
            return
        if model in self._pending:
            return  # this replica's own decision goes first; published, it is the record
        record, _ = found
        entry = m.entry(model)
        why = f"fleet: {record.origin.describe()}"
        error = ""
        active = entry.serving.active
        if record.active is not None and (active is None
                                          or active.digest != record.active.digest):
            try:
                ref = await self._find(model, record.active.number, record.active.digest)
                await m.activate(model, ref, actor=FLEET_ACTOR, reason=why,
                                 force=record.origin.action == FORCED)
                now = m.entry(model).serving.active
                if now is None or now.digest != record.active.digest:
                    raise SidecarError(f"version {ref} here holds other bytes")
            except SidecarError as exc:
                error = (f"cannot serve the fleet's version {record.active.number}"
                         f" ({record.active.digest[:12]}): {exc}")
        if record.pinned != entry.pinned:
            await m.set_pinned(model, record.pinned, actor=FLEET_ACTOR, reason=why)
        if record.guard != entry.guard:
            await m.set_guard(model, dict(record.guard), actor=FLEET_ACTOR)
            if self._on_guard is not None:
                self._on_guard(model)
        if record.watermark > entry.watermark:
            await m.raise_watermark(model, record.watermark)
        if error != self.errors.get(model, ""):
            if error:
                self.errors[model] = error
                log.warning("not following the fleet", extra={"model": model,
                                                              "reason": error})
                await m.note(model, "fleet-diverged", actor=FLEET_ACTOR, reason=error,
                             version=record.active.number if record.active else 0)
            else:
                self.errors.pop(model, None)
            self._member_dirty.set()

    async def _find(self, model: str, number: int, digest: str) -> str:
        """How to name the fleet's version here: its number if this replica's file
        under that number has its bytes, else its digest (wherever it is)."""
        entry = self._manager.entry(model)
        version = entry.versions.get(number)
        if version is not None:
            identity = await self._manager.identify(version)
            if version.digest == digest or (identity is not None and identity.digest == digest):
                return str(number)
        try:
            await self._manager.resolve(entry, digest)
            return digest
        except NotFoundError as exc:
            raise NotFoundError(f"no version of model '{model}' here has digest"
                                f" {digest[:12]}") from exc

    # ---- publishing local decisions --------------------------------------------------------

    async def _publish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                for digest, mark in list(self._pending_marks.items()):
                    await self._write_mark(digest, mark)
                    if self._pending_marks.get(digest) is mark:
                        del self._pending_marks[digest]
                for model, record in list(self._pending.items()):
                    await self._publish_one(model, record, self._based.get(model, 0))
                    if self._pending.get(model) is record:
                        del self._pending[model]
                        self._based.pop(model, None)
            except EtcdError as exc:
                log.info("fleet decisions not published yet", extra={"reason": str(exc)})
                await asyncio.sleep(_RETRY_S)  # a retry pause, not a wait for an event
                self._wake.set()

    async def _publish_one(self, model: str, record: FleetModel, based: int) -> None:
        """Write a decision made here. First against the record revision it was made
        on; if the fleet changed since, the decision still stands only while the
        fleet serves quarantined bytes: then its versions are written onto the
        current record (whose pin and settings are kept); else the fleet has moved
        on to a good version, and this replica converges on that instead."""
        key = model_key(self.fleet, model)
        result = await self._client.swap(key, record.to_json(), based, deadline=self._deadline)
        for _ in range(8):
            if result.ok:
                self.records[model] = (record, result.current.mod_revision
                                       if result.current else 0)
                return
            current = self._remember(model, result.current)
            if current is None or current.active is None \
                    or current.active.digest not in self._manager.quarantine:
                log.info("fleet moved on: local decision not published",
                         extra={"model": model})
                self._converge_soon(model)
                return
            record = FleetModel(record.active, record.previous, current.pinned,
                                dict(current.guard), max(current.watermark, record.watermark),
                                record.origin)
            revision = result.current.mod_revision if result.current else 0
            result = await self._client.swap(key, record.to_json(), revision,
                                             deadline=self._deadline)

    # ---- membership ---------------------------------------------------------------------

    async def _changed(self, model: str, ready: bool) -> None:
        self._member_dirty.set()

    def member(self) -> Member:
        models = {}
        for entry in self._manager.entries():
            active = entry.serving.active
            models[entry.name] = MemberModel(active.number if active else 0,
                                             active.digest if active else "",
                                             active is not None,
                                             self.errors.get(entry.name, ""))
        return Member(self.replica, self.address, self.control_address, self._started, models)

    async def _register(self) -> None:
        key = member_key(self.fleet, self.replica)
        while True:
            try:
                if self._lease is None or self._lease.lost.is_set():
                    self._lease = await self._client.grant(self._lease_s,
                                                           deadline=self._deadline)
                self._member_dirty.clear()
                await self._client.put(key, self.member().to_json(), lease=self._lease.id,
                                       deadline=self._deadline)
                lost = asyncio.ensure_future(self._lease.lost.wait())
                dirty = asyncio.ensure_future(self._member_dirty.wait())
                try:
                    await asyncio.wait({lost, dirty}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    dirty.cancel()
            except EtcdError as exc:
                log.info("fleet membership not written yet", extra={"reason": str(exc)})
                await asyncio.sleep(_RETRY_S)  # a retry pause, not a wait for an event

    @property
    def connected(self) -> bool:
        """Whether the watch of the fleet is up (changes reach this replica)."""
        return self._watching is not None and self._watching.connected.is_set()

    def status(self) -> FleetStatus:
        return FleetStatus(
            self.fleet, self.replica, self.connected,
            tuple(self.members[name] for name in sorted(self.members)),
            tuple((name, rec) for name, (rec, _) in sorted(self.records.items())),
            tuple(sorted(self.marks.items())),
            len(self._pending) + len(self._pending_marks),
            tuple(sorted(self.errors.items())))


def _names(expected: str, record: FleetModel) -> bool:
    """Whether `expected` (a number, a 12+ hex digest prefix, or "none") names the
    record's active version."""
    text, active = expected.strip().lower(), record.active
    if active is None:
        return text in {"none", "0"}
    return text == str(active.number) or (len(text) >= 12 and active.digest.startswith(text))


def describe(record: FleetModel | None) -> str:
    if record is None:
        return "the fleet has no record of it"
    active = f"version {record.active.number}" if record.active else "nothing"
    return f"the fleet serves {active} ({record.origin.describe()})"

