"""The control-plane operations, transport-free: views of models and versions,
and the commands (load, activate, rollback, unload, pin), each with an actor
and a reason for the event log; versions side by side (compare) and the guard's
proposals (list, approve, dismiss)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import __version__
from sidecar.errors import FailedPreconditionError, InvalidInputError, UnavailableError
from sidecar.fleet.link import FleetLink, FleetStatus
from sidecar.guard.guard import Decision, Guard, Proposal
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.versionmeta import iso8601
from sidecar.loader.onnx import OnnxMeta
from sidecar.loader.signature import TensorSpec
from sidecar.manager.entry import ModelEntry, SwapResult
from sidecar.manager.fleethook import ADOPTED
from sidecar.manager.manager import ModelManager
from sidecar.manager.version import ModelVersion
from sidecar.quality.engine import CompareRow, QualityEngine
from sidecar.state.events import Event

_ACTOR = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Ref:
    number: int
    digest: str


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    active: Ref | None
    previous: Ref | None
    pinned: bool
    ready: bool
    loaded_versions: tuple[int, ...]
    versions_on_disk: int
    canary: Ref | None = None
    canary_weight: float = 0.0
    shadow: Ref | None = None
    guard_note: str = ""
    #: Why the last canary or shadow ended (superseded, aborted, a restart).
    note: str = ""
    #: sidecar.json's `serve` now, the one last applied, and why the pod does not
    #: serve it ("" each: none; see docs/gitops.md)
    declared: tuple[str, str, str] = ("", "", "")


@dataclass(frozen=True, slots=True)
class GuardView:
    model: str
    settings: dict[str, str]
    overrides: dict[str, str]
    state: dict[str, str]


@dataclass(frozen=True, slots=True)
class CandidateView:
    model: str
    candidate: Ref
    kind: str
    figures: dict[str, str]


@dataclass(frozen=True, slots=True)
class VersionView:
    model: str
    number: int
    digest: str
    size: int
    mtime: float
    ctime: float
    loaded_at: float
    activated_at: float
    path: str
    state: str
    reason: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    inflight: int
    quarantined: bool
    #: (max_batch_size, max_queue_delay_microseconds, preferred sizes, refusal,
    #: batches of more than one request); None: the version does not batch
    batching: tuple[int, int, tuple[int, ...], str, int] | None = None
    #: ISO 8601 (UTC): when the version appeared (see `ModelVersion.created`)
    #: and its file's mtime ("": unknown, e.g. no file)
    created: str = ""
    updated: str = ""
    #: What the file says about itself; None until the version was loaded (it
    #: stays known after an unload, until the file changes)
    onnx: OnnxMeta | None = None
    #: The git commit that last changed the file (`Commit.as_dict()` keys); empty:
    #: not a git work tree, or unknown
    commit: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompareView:
    """Every loaded version of a model side by side (`QualityEngine.compare`)."""

    model: str
    rows: tuple[CompareRow, ...]
    favoured: int  # the version the evidence favours; 0: none
    favour_reason: str
    metric: str  # the configured quality metric; "" without quality settings
    quality: str  # the quality settings in one line, or "off (why)"
    feedback: dict[str, int]  # the model's feedback figures (QualityEngine.counts)


@dataclass(frozen=True, slots=True)
class StatusView:
    version: str
    ready: bool
    uptime_s: float
    warm_versions: int
    state_dir: str
    models: list[ModelView]


def _batching(version: ModelVersion) -> tuple[int, int, tuple[int, ...], str, int] | None:
    servable = version.servable
    if servable is None:
        return None
    batcher = servable.batcher
    if batcher is not None:
        config = batcher.config
        runs = sum(d.count for rows, d in servable.stats.batches.items() if rows > 1)
        return (config.max_batch_size, config.max_queue_delay_microseconds,
                config.preferred_batch_size, "", runs)
    if servable.batching_note:
        return 0, 0, (), servable.batching_note, 0
    return None


def _ref(version: ModelVersion | None) -> Ref | None:
    return Ref(version.number, version.digest) if version is not None else None


#: Longest free text a command may carry into the event log (a reason): more is
#: refused, so no client can bloat the history or the memory that pages it.
MAX_REASON = 1024
MAX_GUARD_TEXT = 64
#: Longest proposal id a command may name (the guard's are 12 hex characters).
MAX_PROPOSAL_ID = 64


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON:
        raise InvalidInputError(f"reason is {len(reason)} characters; at most {MAX_REASON}")
    return reason


#: Actors only the sidecar itself may act as: the guard's own rollbacks skip
#: probation, and the event log and metrics attribute changes by actor.
RESERVED_ACTORS = frozenset({"guard", "watcher", "startup", "sidecar", "fleet"})


def check_actor(actor: str, default: str) -> str:
    actor = actor or default
    if not _ACTOR.match(actor[:40]):
        raise InvalidInputError(f"actor '{actor[:40]}' must be 1-32 of a-z, 0-9, '-', '_'")
    if actor in RESERVED_ACTORS:
        raise InvalidInputError(f"actor '{actor}' is the sidecar's own; pick another name")
    return actor


def _check_proposal_id(proposal_id: str) -> str:
    if len(proposal_id) > MAX_PROPOSAL_ID:
        raise InvalidInputError(f"proposal id is {len(proposal_id)} characters; at most"
                                f" {MAX_PROPOSAL_ID}")
    return proposal_id


class ControlPlane:
    def __init__(self, manager: ModelManager, *, state_dir: Path, ready: object,
                 guard: Guard | None = None, mirror: ShadowMirror | None = None) -> None:
        self._manager = manager
        self._guard = guard
        self._mirror = mirror
        self._state_dir = state_dir
        self._ready = ready  # a callable answering server readiness
        self._started = time.time()
        #: fleet mode: the replica's link to its fleet (set by the app)
        self.fleet: FleetLink | None = None

    def fleet_status(self) -> FleetStatus:
        """The fleet as this replica sees it (FailedPreconditionError without one)."""
        if self.fleet is None:
            raise FailedPreconditionError("this sidecar is not in a fleet (start it with"
                                          " --fleet-etcd and --fleet-name)")
        return self.fleet.status()

    def model_view(self, entry: ModelEntry) -> ModelView:
        serving = entry.serving
        note = self._guard.model(entry.name).note if self._guard else ""
        return ModelView(entry.name, _ref(serving.active), _ref(serving.previous), entry.pinned,
                         serving.active is not None, tuple(sorted(serving.loaded)),
                         len(entry.versions), _ref(serving.canary), serving.canary_weight,
                         _ref(serving.shadow), note, entry.note,
                         (entry.declaring, "" if entry.declared == ADOPTED else entry.declared,
                          entry.conflict(self._manager.quarantine)))

    def models(self) -> list[ModelView]:
        return [self.model_view(e) for e in self._manager.entries()]

    def status(self) -> StatusView:
        ready = bool(self._ready()) if callable(self._ready) else False
        return StatusView(__version__, ready, time.time() - self._started,
                          self._manager.warm_versions, str(self._state_dir), self.models())

    async def version_view(self, entry: ModelEntry, version: ModelVersion) -> VersionView:
        identity = version.loaded.identity if version.loaded else await self._manager.identify(
            version)
        signature = version.loaded.signature if version.loaded else None
        stats = version.stats
        digest = identity.digest if identity else ""
        return VersionView(
            model=entry.name, number=version.number, digest=digest,
            size=identity.size if identity else 0,
            mtime=identity.mtime_ns / 1e9 if identity else 0.0,
            ctime=identity.ctime_ns / 1e9 if identity else 0.0,
            loaded_at=version.loaded_at if version.loaded else 0.0,
            activated_at=version.activated_at, path=str(version.path),
            state=entry.state_of(version),
            reason=version.reason or self._manager.quarantine.get(digest, "")
            or entry.skipped_reason(version),
            inputs=signature.inputs if signature else (),
            outputs=signature.outputs if signature else (),
            requests=stats.success.count + stats.fail.count, errors=stats.fail.count,
            p50_ms=stats.latency.percentile(50) / 1e6,
            p90_ms=stats.latency.percentile(90) / 1e6,
            p99_ms=stats.latency.percentile(99) / 1e6,
            inflight=version.inflight, quarantined=digest in self._manager.quarantine,
            batching=_batching(version),
            created=iso8601(version.note_created()),
            updated=iso8601(identity.mtime_ns / 1e9) if identity else "",
            onnx=identity.onnx if identity else None,
            commit=dict(await self._manager.loading.provenance(version)),
        )

    async def versions(self, model: str) -> list[VersionView]:
        entry = self._manager.entry(model)
        return [await self.version_view(entry, entry.versions[n]) for n in sorted(entry.versions)]

    async def load(self, model: str, ref: str, *, actor: str, reason: str) -> VersionView:
        if not ref:
            raise InvalidInputError("load needs a version (number or digest prefix)")
        version = await self._manager.load(model, ref, actor=check_actor(actor, "rpc"),
                                           reason=check_reason(reason))
        return await self.version_view(self._manager.entry(model), version)

    async def activate(self, model: str, ref: str, *, actor: str, expected_active: str,
                       force: bool, reason: str) -> SwapResult:
        return await self._manager.activate(
            model, ref, actor=check_actor(actor, "rpc"), expected_active=expected_active,
            force=force, reason=check_reason(reason))

    async def rollback(self, model: str, *, actor: str, expected_active: str, reason: str,
                       force: bool = False) -> SwapResult:
        return await self._manager.rollback(
            model, actor=check_actor(actor, "rpc"), expected_active=expected_active,
            force=force, reason=check_reason(reason))

    async def unload(self, model: str, ref: str, *, actor: str, reason: str) -> None:
        await self._manager.unload(model, ref, actor=check_actor(actor, "rpc"),
                                   reason=check_reason(reason))

    async def pin(self, model: str, pinned: bool, *, actor: str, reason: str) -> bool:
        await self._manager.set_pinned(model, pinned, actor=check_actor(actor, "rpc"),
                                       reason=check_reason(reason))
        return pinned

    # ---- guard, candidates, quarantine ---------------------------------------------

    def _need_guard(self) -> Guard:
        if self._guard is None:
            raise FailedPreconditionError("the guard is off (--no-guard)")
        return self._guard

    def guard_view(self, model: str) -> GuardView:
        guard = self._need_guard()
        entry = self._manager.entry(model)
        settings = guard.reload(model)
        return GuardView(model, {k: str(v) for k, v in settings.to_dict().items()},
                         dict(entry.guard), guard.status(model))

    async def set_guard(self, model: str, changes: dict[str, str], *, reset: bool,
                        actor: str) -> GuardView:
        guard = self._need_guard()
        entry = self._manager.entry(model)
        too_long = [k for k, v in changes.items()
                    if len(k) > MAX_GUARD_TEXT or len(str(v)) > MAX_GUARD_TEXT]
        if too_long:
            raise InvalidInputError(f"guard setting '{too_long[0][:MAX_GUARD_TEXT]}': keys and"
                                    f" values are at most {MAX_GUARD_TEXT} characters")
        merged = {} if reset else dict(entry.guard)
        merged.update({k: str(v) for k, v in changes.items()})
        try:
            guard.settings_for(model, merged)  # validate before keeping
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        await self._manager.set_guard(model, merged, actor=check_actor(actor, "rpc"))
        guard.reload(model)
        return self.guard_view(model)

    # ---- quality and proposals ---------------------------------------------------

    def _need_quality(self) -> QualityEngine:
        engine = self._need_guard().quality
        if engine is None:
            raise FailedPreconditionError("quality judging is not running in this server")
        return engine

    def compare(self, model: str) -> CompareView:
        """One row per loaded version (NotFoundError for an unknown model); a model
        without quality settings gets its rows without metrics."""
        engine = self._need_quality()
        rows = tuple(engine.compare(model))
        favoured, why = engine.favoured(model)  # what the rows' flags say, once more
        config = engine.config(model)
        return CompareView(model, rows, favoured, why, config.metric if config else "",
                           engine.status(model).get("quality", ""), engine.counts(model))

    def proposals(self, model: str = "") -> list[Proposal]:
        """The proposals waiting for a person: the model's (NotFoundError if it is
        unknown), or every model's."""
        guard = self._need_guard()
        if not model:
            return guard.proposals()
        self._manager.entry(model)
        proposal = guard.proposal(model)
        return [proposal] if proposal is not None else []

    async def approve(self, model: str, *, actor: str, reason: str, proposal_id: str
                      ) -> Decision:
        """Roll back and quarantine as the guard would have, by `actor`."""
        return await self._need_guard().approve(
            model, check_actor(actor, "rpc"), reason=check_reason(reason),
            proposal_id=_check_proposal_id(proposal_id))

    async def dismiss(self, model: str, *, actor: str, reason: str, proposal_id: str
                      ) -> Decision:
        """Keep serving; the same evidence is not proposed again."""
        return await self._need_guard().dismiss(
            model, check_actor(actor, "rpc"), reason=check_reason(reason),
            proposal_id=_check_proposal_id(proposal_id))

    async def start_candidate(self, model: str, ref: str, *, kind: str, weight_percent: float,
                              force: bool, actor: str, reason: str) -> CandidateView:
        if not ref:
            raise InvalidInputError(f"{kind} needs a version (number or digest prefix)")
        if kind == "shadow" and (self._guard is None or not self._guard.reload(model).enabled):
            raise FailedPreconditionError(
                f"model '{model[:80]}': the guard is off (--no-guard or enabled=false), and"
                " a shadow is only the guard's comparison: no copy would ever be sent")
        version = await self._manager.candidates.start(
            model, ref, kind=kind, weight=weight_percent / 100, force=force,
            actor=check_actor(actor, "rpc"), reason=check_reason(reason))
        return CandidateView(model, Ref(version.number, version.digest), kind, {})

    async def promote(self, model: str, *, actor: str, reason: str) -> SwapResult:
        return await self._manager.candidates.promote(model, actor=check_actor(actor, "rpc"),
                                                      reason=check_reason(reason))

    async def abort(self, model: str, *, actor: str, reason: str) -> CandidateView:
        serving = self._manager.entry(model).serving
        kind = "canary" if serving.canary is not None else "shadow"
        figures = self.shadow_figures(model)
        version = await self._manager.candidates.abort(model, actor=check_actor(actor, "rpc"),
                                                       reason=check_reason(reason))
        return CandidateView(model, Ref(version.number, version.digest), kind, figures)

    def shadow_figures(self, model: str) -> dict[str, str]:
        shadow = self._manager.entry(model).serving.shadow
        if self._mirror is None or shadow is None or shadow.servable is None:
            return {}
        counts = self._mirror.counts_for(model, shadow.servable)
        return {"compared": str(counts.compared), "disagreed": str(counts.disagreed),
                "dropped": str(counts.dropped), "failed": str(counts.failed)}

    async def quarantine(self, model: str, ref: str, *, actor: str, reason: str
                         ) -> tuple[str, dict[str, str]]:
        digest = await self._manager.quarantine_version(
            model, ref, actor=check_actor(actor, "rpc"), reason=check_reason(reason))
        return digest, dict(self._manager.quarantine)

    async def unquarantine(self, prefix: str, *, actor: str, reason: str
                           ) -> tuple[str, dict[str, str]]:
        digest = await self._manager.unquarantine(
            prefix, actor=check_actor(actor, "rpc"), reason=check_reason(reason))
        return digest, dict(self._manager.quarantine)

    async def events(self, *, after: int, limit: int, model: str) -> tuple[list[Event], int]:
        """One page of history (also cut at ~1 MiB of events) and the last seq."""
        limit = min(limit or 100, MAX_PAGE)
        log = self._manager.events
        page = await log.page_async(after=after, limit=limit, model=model)
        return page, log.last_seq

    async def watch(self, *, after: int, model: str) -> AsyncIterator[Event]:
        """History after `after`, then live events, with no gap and no repeat."""
        log = self._manager.events
        subscription = log.subscribe()  # before the history: nothing falls between
        try:
            last = after
            while True:  # a page may be cut by size: read until one comes back empty
                page = await log.page_async(after=last, limit=MAX_PAGE, model=model)
                if not page:
                    break
                for event in page:
                    yield event
                    last = event.seq
            while True:
                live = await subscription.next()
                if live is None and subscription.overflowed:
                    raise UnavailableError(
                        f"event follower fell behind; follow again with after_seq={last}")
                if live is None:
                    raise UnavailableError(
                        f"the server is stopping; follow again with after_seq={last}")
                if live.seq > last and (not model or live.model == model):
                    yield live
                    last = live.seq
        finally:
            subscription.close()
