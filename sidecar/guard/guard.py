"""The guard at run time: watches sessions and acts through the manager.

The guard owns its windows. While it watches a version it sets a `Watch` as
the observer of that version's session (`Servable.observer`); the data plane
tells the observer each server-side outcome, and nothing else. A session
nobody watches has no observer, so with the guard off (`--no-guard`, or
`enabled=false` for a model) recording costs nothing and no window exists.

What is watched (while the guard is on for the model):
- the active version: always (its p99 is the baseline the next version is
  compared with), and judged during its probation after an activation (not
  after the guard's own rollback: the cooldown protects against flapping).
  The probation's end is persisted, so a restart goes on judging it;
- the canary, against the same rules, with the active version's live p99 as
  its latency baseline; promoted after a healthy span;
- the shadow (see `shadow.py`), by agreement with the active version.
Each candidate run gets a fresh window: it is judged on its own evidence only.

An action (rollback, canary abort or promotion) is scheduled as a task, so no
request waits for it. Nothing automatic happens on a pinned model, within a
model's cooldown, or when the previous version is not warm (an event says so).

Modes (the `mode` setting): "auto" acts as above. "propose" turns a rollback
of the active version (by the error, latency or quality rule) into a
`Proposal`: nothing changes, an event `rollback-proposed` carries the
evidence, and a person `approve`s it (the rollback and quarantine the guard
would have done, by that person) or `dismiss`es it (event `rollback-dismissed`;
the same evidence is not proposed again, new evidence is). One proposal per
model at a time; a change of what serves drops it. With `approve_after_s` > 0
the guard approves alone when nobody answered in time. Canary and shadow
verdicts act as in "auto". "off": windows are kept (status, metrics) but
nothing is judged or done.

The quality rule (sidecar/quality/engine.py) judges the active version on
ground truth; while the version is on probation its verdict goes through
`quality_fired`, and from there the same rollback path as the other rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sidecar.errors import FailedPreconditionError, SidecarError
from sidecar.guard.rules import GuardSettings, Verdict, judge
from sidecar.guard.window import OutcomeWindow
from sidecar.manager.entry import ModelEntry, SwapResult
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable
from sidecar.manager.version import ModelVersion, Phase
from sidecar.quality.config import is_quality_override
from sidecar.quality.judge import QualityVerdict, evidence_key

if TYPE_CHECKING:
    from sidecar.quality.engine import QualityEngine

log = logging.getLogger("sidecar.guard")

ACTOR = "guard"
_LATENCY_EVERY = 16  # observations between latency checks (a sort of the window)
#: ... and at most this often (s): at thousands of requests a second, a sort
#: every 16 would cost a few percent of the request path for nothing.
_JUDGE_EVERY_S = 0.05

#: model name -> its settings file's "guard" object (may be empty)
SettingsSource = Callable[[str], dict[str, Any]]
#: Most evidence values kept in a proposal or an event's details.
_MAX_DETAILS = 48


@dataclass(frozen=True, slots=True)
class Proposal:
    """A rollback the guard would have done in mode "auto", waiting for a person."""

    id: str
    model: str
    from_version: int  # the active version, to roll back
    from_digest: str
    to_version: int  # the warm previous version, to roll back to
    to_digest: str
    rule: str  # error-ratio | consecutive-failures | latency | quality-drop | quality-floor
    reason: str  # one line with the figures
    evidence: dict[str, str]  # the details the rollback event would carry
    key: str  # names the evidence: the same key is not proposed twice
    time: float  # unix seconds
    approve_at: float = 0.0  # unix seconds the guard approves alone (0: never)


@dataclass(frozen=True, slots=True)
class Decision:
    """What `approve` or `dismiss` did."""

    proposal: Proposal
    actor: str
    approved: bool
    swap: SwapResult | None = None  # approve: the rollback
    quarantined: str = ""  # approve: the digest quarantined


class Watch:
    """The guard's window on one session; the session's observer."""

    __slots__ = ("_guard", "_model", "next_judged", "servable", "window")

    def __init__(self, guard: Guard, servable: Servable, window: OutcomeWindow) -> None:
        self._guard = guard
        self._model = guard.model(servable.model)  # one per model, for the process's life
        self.servable = servable
        self.window = window
        self.next_judged = 0.0  # monotonic: successes are not judged before this

    def observe(self, ok: bool, latency_ns: int) -> None:
        model, servable = self._model, self.servable
        if ok and servable is not model.watched and servable is not model.candidate:
            # A success of a version neither on probation nor a canary or shadow
            # judges nothing (Guard.observed would only record it): the request
            # path's common case, recorded here.
            self.window.record(self._guard._clock(), True, latency_ns)
            return
        self._guard.observed(self, ok, latency_ns)


@dataclass(slots=True)
class ModelGuard:
    settings: GuardSettings
    watched: Servable | None = None  # the active version on probation
    baseline: tuple[float, int] = (0.0, 0)  # previous version's p99 ns, samples
    cooldown_until: float = 0.0  # monotonic
    pending: bool = False  # an action is scheduled
    candidate: Servable | None = None  # the candidate run being judged
    canary_since: float = 0.0
    note: str = ""  # the last thing the guard could not do, for status
    counts: dict[str, int] = field(default_factory=dict)
    proposal: Proposal | None = None  # mode "propose": the one waiting for a person
    dismissed: set[str] = field(default_factory=set)  # evidence keys not to propose again
    approving: bool = False  # an approved rollback is under way (no probation after it)


class Guard:
    def __init__(self, manager: ModelManager, *, defaults: GuardSettings,
                 settings_source: SettingsSource, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._manager = manager
        self._defaults = defaults
        #: --no-guard: off for every model, whatever a model's file says.
        self._master = defaults.enabled
        self._source = settings_source
        self._clock = clock
        self._wall = wall_clock
        self._models: dict[str, ModelGuard] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: The quality engine, once it attached itself (sidecar/quality/engine.py):
        #: its settings ride on the guard's (checked, reloaded, shown with them), and
        #: the control surface reaches it here (compare, feedback counts).
        self.quality: QualityEngine | None = None
        manager.add_swap_hook(self.on_swap)

    # ---- settings ----------------------------------------------------------------

    def settings_for(self, model: str, overrides: dict[str, str] | None = None
                     ) -> GuardSettings:
        """Defaults, then the model's sidecar.json "guard", then commands' overrides.

        Commands' quality keys (`quality`, `quality.*`) are the quality engine's:
        checked by it when a command gives them (ValueError), skipped here."""
        entry = self._manager.entry(model)
        settings = self._defaults
        if overrides is not None and self.quality is not None and any(
                is_quality_override(k) for k in overrides):
            self.quality.check_overrides(model, overrides)
        from_file = self._source(model)
        if from_file:
            try:
                settings = settings.updated(from_file)
            except ValueError as exc:
                log.error("bad guard settings in the model's file; ignored",
                          extra={"model": model, "reason": str(exc)})
        given = {k: v for k, v in (entry.guard if overrides is None else overrides).items()
                 if not is_quality_override(k)}
        if given and overrides is None:
            try:
                settings = settings.updated(given)
            except ValueError as exc:  # saved before validation was this strict
                log.error("bad guard settings in the saved state; ignored",
                          extra={"model": model, "reason": str(exc)})
        elif given:
            settings = settings.updated(given)  # a command's: the caller reports it
        if not self._master and settings.enabled:
            settings = settings.updated({"enabled": False})
        return settings

    def model(self, name: str) -> ModelGuard:
        guard = self._models.get(name)
        if guard is None:
            guard = self._models[name] = ModelGuard(self.settings_for(name))
        return guard

    def reload(self, name: str) -> GuardSettings:
        """Re-read a model's settings (after a change by command or file)."""
        guard = self.model(name)
        before, guard.settings = guard.settings, self.settings_for(name)
        if guard.settings.mode != "propose" or not guard.settings.enabled:
            guard.proposal = None  # nobody is asked any more
        if self.quality is not None:
            self.quality.reload(name)
        if not self._manager.has_model(name):
            return guard.settings
        entry = self._manager.entry(name)
        if before.enabled != guard.settings.enabled:
            self._rewatch(entry)
        active = entry.serving.active
        if (before.probation_s != guard.settings.probation_s and guard.watched is not None
                and active is not None and guard.watched is active.servable):
            # The probation is counted from the activation, whatever it was set to then.
            entry.probation_until = active.activated_at + guard.settings.probation_s
        return guard.settings

    def reload_changed(self, name: str) -> dict[str, str]:
        """Re-read a model's settings; the ones that changed, by name ({} if none)."""
        before = self.model(name).settings
        after = self.reload(name)
        return {k: str(v) for k, v in after.to_dict().items() if before.to_dict()[k] != v}

    # ---- windows -------------------------------------------------------------------

    def _watch(self, servable: Servable, settings: GuardSettings, *, fresh: bool) -> Watch:
        watch = servable.observer
        if isinstance(watch, Watch) and not fresh:
            return watch
        watch = Watch(self, servable, OutcomeWindow(settings.window_requests,
                                                    settings.window_s))
        servable.observer = watch
        return watch

    @staticmethod
    def window_of(servable: Servable | None) -> OutcomeWindow | None:
        watch = servable.observer if servable is not None else None
        return watch.window if isinstance(watch, Watch) else None

    def watches(self) -> Iterator[Watch]:
        """Every window the guard keeps (for metrics)."""
        for entry in self._manager.entries():
            for version in entry.serving.loaded.values():
                servable = version.servable
                if servable is not None and isinstance(servable.observer, Watch):
                    yield servable.observer

    def _rewatch(self, entry: ModelEntry) -> None:
        """Watch exactly what serves (nothing at all while the guard is off)."""
        guard = self.model(entry.name)
        serving = entry.serving
        wanted = {v.servable for v in (serving.active, serving.canary, serving.shadow)
                  if v is not None and v.servable is not None} if guard.settings.enabled else set()
        for version in serving.loaded.values():
            servable = version.servable
            if servable is not None and servable not in wanted:
                servable.observer = None
        for servable in wanted:
            self._watch(servable, guard.settings, fresh=False)
        if not guard.settings.enabled:
            guard.watched = guard.candidate = None
        else:  # what a Watch judges successes of (after a restore, or the guard turned on)
            candidate = serving.canary or serving.shadow
            guard.candidate = candidate.servable if candidate is not None else None

    # ---- hooks from the manager ------------------------------------------------------

    def on_swap(self, entry: ModelEntry, before: ModelVersion | None, actor: str) -> None:
        """After a change of what serves: fresh windows, probation, latency baseline."""
        guard = self.model(entry.name)
        serving = entry.serving
        proposal = guard.proposal
        if proposal is not None and (
                serving.active is None or serving.active.number != proposal.from_version
                or serving.previous is None or serving.previous.number != proposal.to_version):
            guard.proposal = None  # stale: what it would change changed
        if serving.active is not before:
            guard.dismissed.clear()  # keys name versions: those of the old pair are done
        if not guard.settings.enabled:
            entry.probation_until = 0.0
            self._rewatch(entry)
            return
        now = self._clock()
        active = serving.active
        if active is not None and active is not before and active.servable is not None:
            old = self.window_of(before.servable) if before is not None else None
            guard.baseline = old.latency_percentile(99, now) if old else (0.0, 0)
            self._watch(active.servable, guard.settings, fresh=True)
            if actor == ACTOR or guard.approving:
                guard.watched, entry.probation_until = None, 0.0  # no probation after it
            else:
                guard.watched = active.servable
                entry.probation_until = self._wall() + guard.settings.probation_s
        candidate = serving.canary or serving.shadow
        servable = candidate.servable if candidate is not None else None
        if servable is not guard.candidate:
            guard.candidate = servable
            if servable is not None:  # a new run: judged on its own evidence only
                self._watch(servable, guard.settings, fresh=True)
                guard.canary_since = now
        self._rewatch(entry)

    def start(self) -> None:
        """Watch what serves after the restore; a version restored while still on
        probation goes on being judged (the rest of its probation)."""
        wall = self._wall()
        for entry in self._manager.entries():
            guard = self.model(entry.name)
            self._rewatch(entry)
            active = entry.serving.active
            if (guard.settings.enabled and active is not None
                    and entry.probation_until > wall):
                guard.watched = active.servable
            else:
                entry.probation_until = 0.0

    def nonfinite_check(self, model: str) -> bool:
        guard = self._models.get(model)
        return guard is not None and guard.settings.enabled and guard.settings.fail_on_nonfinite

    # ---- judging -----------------------------------------------------------------------

    def observed(self, watch: Watch, ok: bool, latency_ns: int) -> None:
        """One server-side outcome of a watched session; act (later) if it is bad."""
        now = self._clock()
        window, servable = watch.window, watch.servable
        window.record(now, ok, latency_ns)
        guard = self._models.get(servable.model)
        if guard is None or guard.pending or guard.settings.mode == "off":
            return
        if servable is guard.watched:
            if ok and (window.total % _LATENCY_EVERY or now < watch.next_judged):
                # A success cannot newly break the error rules (bar a window entry
                # expiring, seen at the next check): successes are judged with
                # the latency rule, every _LATENCY_EVERY outcomes and at most every
                # _JUDGE_EVERY_S; failures at once.
                return
            watch.next_judged = now + _JUDGE_EVERY_S
            entry = self._manager.entry(servable.model)
            if self._wall() > entry.probation_until:
                guard.watched = None  # trusted from now on
                return
            proposal = guard.proposal
            if proposal is not None and proposal.from_version == servable.number:
                return  # a person decides on this version now
            verdict = self._judge(window, guard, now, guard.baseline)
            if verdict.bad:
                key = _window_key(servable, verdict)
                if key not in guard.dismissed:
                    self._schedule(guard, self._rollback(
                        servable, verdict, self._evidence(window, verdict, guard.settings),
                        key))
            return
        serving = self._manager.entry(servable.model).serving
        if serving.canary is not None and servable is serving.canary.servable:
            active = self.window_of(serving.active.servable if serving.active else None)
            baseline = active.latency_percentile(99, now) if active else (0.0, 0)
            verdict = self._judge(window, guard, now, baseline)
            if verdict.bad:
                self._schedule(guard, self._abort(servable, verdict, window))
            elif (window.total >= guard.settings.canary_promote_requests
                  and now - guard.canary_since >= guard.settings.canary_promote_s):
                self._schedule(guard, self._promote(servable, window))

    def _judge(self, window: OutcomeWindow, guard: ModelGuard, now: float,
               baseline: tuple[float, int]) -> Verdict:
        stats = window.stats(now)
        p99, samples = 0.0, 0
        if window.total % _LATENCY_EVERY == 0:
            p99, samples = window.latency_percentile(99, now)
        return judge(stats, guard.settings, p99_ns=p99, samples=samples,
                     baseline_p99_ns=baseline[0], baseline_samples=baseline[1])

    # ---- actions -------------------------------------------------------------------

    def _schedule(self, guard: ModelGuard, action: Any) -> None:
        guard.pending = True
        task = asyncio.get_running_loop().create_task(self._run(guard, action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, guard: ModelGuard, action: Any) -> None:
        try:
            await action
        except SidecarError as exc:
            guard.note = str(exc)
            log.warning("guard action refused", extra={"reason": str(exc)})
        except Exception:
            log.exception("guard action failed")
        finally:
            guard.pending = False

    def _evidence(self, window: OutcomeWindow, verdict: Verdict, settings: GuardSettings
                  ) -> dict[str, str]:
        details = window.stats(self._clock()).describe()
        details.update(rule=verdict.rule, max_error_ratio=str(settings.max_error_ratio),
                       min_requests=str(settings.min_requests),
                       window=f"{settings.window_requests} requests / {settings.window_s:g} s")
        return details

    # ---- the quality rule ------------------------------------------------------------

    def quality_wanted(self, model: str, version: int) -> bool:
        """Whether a quality verdict on `version` (the active version) could act now:
        the guard is on and not "off", the version is on probation, nothing is
        pending, and no proposal about it waits for a person."""
        guard = self._models.get(model)
        if (guard is None or not guard.settings.enabled or guard.settings.mode == "off"
                or guard.pending):
            return False
        watched = guard.watched
        if watched is None or watched.number != version:
            return False
        if self._wall() > self._manager.entry(model).probation_until:
            guard.watched = None  # trusted from now on
            return False
        proposal = guard.proposal
        return proposal is None or proposal.from_version != version

    def quality_fired(self, model: str, verdict: QualityVerdict) -> bool:
        """The quality rule fired for the active version on probation: roll it back
        (or propose it) as for any rule. False if nothing was scheduled."""
        guard = self._models.get(model)
        servable = guard.watched if guard is not None else None
        if guard is None or servable is None or not verdict.fire:
            return False
        key = evidence_key(verdict)
        if key in guard.dismissed:
            return False
        details = flat_details(verdict.evidence)
        details["rule"] = verdict.rule
        self._schedule(guard, self._rollback(
            servable, Verdict(True, verdict.rule, verdict.reason), details, key))
        return True

    # ---- proposals (mode "propose") ------------------------------------------------------

    def proposals(self) -> list[Proposal]:
        """The proposals waiting for a person, one per model at most, by model."""
        return [g.proposal for _, g in sorted(self._models.items()) if g.proposal is not None]

    def proposal(self, model: str) -> Proposal | None:
        guard = self._models.get(model)
        return guard.proposal if guard is not None else None

    def _current(self, model: str, proposal_id: str = "") -> tuple[ModelGuard, Proposal]:
        """The model's proposal (the one named, if an id is given), still valid."""
        self._manager.entry(model)  # NotFoundError for an unknown model
        guard = self.model(model)
        proposal = guard.proposal
        if proposal is None or (proposal_id and proposal.id != proposal_id):
            what = f"proposal {proposal_id[:40]}" if proposal_id else "rollback proposal"
            raise FailedPreconditionError(f"model '{model}' has no {what} waiting")
        serving = self._manager.entry(model).serving
        active, previous = serving.active, serving.previous
        if (active is None or active.number != proposal.from_version
                or previous is None or previous.number != proposal.to_version):
            guard.proposal = None
            raise FailedPreconditionError(
                f"proposal {proposal.id} is stale: model '{model}' no longer serves version"
                f" {proposal.from_version} with {proposal.to_version} as previous")
        return guard, proposal

    async def approve(self, model: str, actor: str, *, reason: str = "",
                      proposal_id: str = "") -> Decision:
        """Carry out the model's proposal: roll back and quarantine, as the guard would
        have in mode "auto", with `actor` in the events. FailedPreconditionError if
        there is none (or it is stale); the manager's refusals as they come."""
        guard, proposal = self._current(model, proposal_id)
        m = self._manager
        why = f"approved proposal {proposal.id}" + (f" ({reason})" if reason else "")
        details = {**proposal.evidence, "proposal": proposal.id, "approved_by": actor}
        guard.approving = guard.pending = True
        try:
            swap = await m.rollback(model, actor=actor,
                                    expected_active=str(proposal.from_version),
                                    reason=f"{why}: {proposal.rule}: {proposal.reason}",
                                    details=_bounded(details))
        finally:
            guard.approving = guard.pending = False
        guard.proposal = None
        guard.cooldown_until = self._clock() + guard.settings.cooldown_s
        guard.counts["approved"] = guard.counts.get("approved", 0) + 1
        guard.counts["rollbacks"] = guard.counts.get("rollbacks", 0) + 1
        digest = await m.quarantine_version(
            model, proposal.from_digest, actor=actor,
            reason=f"rolled back on approval of proposal {proposal.id}: {proposal.rule}")
        return Decision(proposal, actor, True, swap, digest)

    async def dismiss(self, model: str, actor: str, *, reason: str = "",
                      proposal_id: str = "") -> Decision:
        """Keep serving; the same evidence is not proposed again (new evidence is)."""
        guard, proposal = self._current(model, proposal_id)
        guard.proposal = None
        guard.dismissed.add(proposal.key)
        guard.counts["dismissed"] = guard.counts.get("dismissed", 0) + 1
        await self._manager.note(
            model, "rollback-dismissed", actor=actor,
            reason=f"dismissed proposal {proposal.id} ({proposal.rule})"
                   + (f": {reason}" if reason else ""),
            version=proposal.to_version, from_version=proposal.from_version,
            from_digest=proposal.from_digest, to_digest=proposal.to_digest,
            details={"proposal": proposal.id, "rule": proposal.rule,
                     "evidence_key": proposal.key})
        return Decision(proposal, actor, False)

    async def _propose(self, guard: ModelGuard, servable: Servable, previous: ModelVersion,
                       verdict: Verdict, details: dict[str, str], key: str) -> None:
        current = guard.proposal
        if current is not None and current.from_version == servable.number:
            return  # one at a time: a person decides on it first
        if key in guard.dismissed:
            return
        now, settings = self._wall(), guard.settings
        after = settings.approve_after_s
        proposal = Proposal(
            uuid.uuid4().hex[:12], servable.model, servable.number, servable.digest,
            previous.number, previous.digest, verdict.rule, verdict.evidence,
            _bounded(details), key, now, now + after if after > 0 else 0.0)
        guard.proposal = proposal
        guard.counts["proposals"] = guard.counts.get("proposals", 0) + 1
        extra = {"proposal": proposal.id, "evidence_key": key}
        if after > 0:
            extra["approve_after_s"] = f"{after:g}"
        await self._manager.note(
            servable.model, "rollback-proposed", actor=ACTOR,
            reason=f"{verdict.rule}: {verdict.evidence}", version=previous.number,
            from_version=servable.number, from_digest=servable.digest,
            to_digest=previous.digest, details=_bounded({**details, **extra}))
        if after > 0:
            task = asyncio.get_running_loop().create_task(
                self._approve_later(servable.model, proposal.id, after))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _approve_later(self, model: str, proposal_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        guard = self._models.get(model)
        if guard is None or guard.proposal is None or guard.proposal.id != proposal_id:
            return  # answered, or dropped by a change of what serves
        try:
            await self.approve(model, ACTOR, proposal_id=proposal_id,
                               reason=f"nobody answered within {delay:g} s")
        except SidecarError as exc:
            guard.note = f"proposal {proposal_id} not approved: {exc}"
            log.warning("proposal not approved", extra={"model": model, "reason": str(exc)})

    # ---- actions -------------------------------------------------------------------

    async def _rollback(self, servable: Servable, verdict: Verdict, details: dict[str, str],
                        key: str) -> None:
        model, m = servable.model, self._manager
        guard, now = self.model(model), self._clock()
        entry = m.entry(model)
        active = entry.serving.active
        if active is None or active.servable is not servable:
            return  # something else changed it meanwhile
        previous = entry.serving.previous
        why = ""
        if entry.pinned:
            why = "the model is pinned"
        elif now < guard.cooldown_until:
            why = f"cooldown: {guard.cooldown_until - now:.0f} s left"
        elif previous is None or previous.phase is not Phase.READY:
            why = "no previous version is warm"
        elif previous.digest in m.quarantine:
            why = f"the previous version {previous.number} is quarantined"
        if why:
            guard.watched, guard.note = None, f"version {servable.number} is bad but not" \
                f" rolled back ({why}): {verdict.evidence}"
            await m.note(model, "guard-held", actor=ACTOR, reason=guard.note,
                         version=servable.number)
            return
        assert previous is not None
        if guard.settings.mode == "propose":
            await self._propose(guard, servable, previous, verdict, details, key)
            return
        await m.rollback(model, actor=ACTOR, expected_active=str(servable.number),
                         reason=f"{verdict.rule}: {verdict.evidence}",
                         details=_bounded(details))
        guard.cooldown_until = self._clock() + guard.settings.cooldown_s
        guard.counts["rollbacks"] = guard.counts.get("rollbacks", 0) + 1
        await m.quarantine_version(model, servable.digest, actor=ACTOR,
                                   reason=f"rolled back by the guard: {verdict.rule}")

    async def _abort(self, servable: Servable, verdict: Verdict, window: OutcomeWindow
                     ) -> None:
        model, m = servable.model, self._manager
        guard = self.model(model)
        if m.entry(model).pinned:
            guard.note = f"canary {servable.number} is bad; model pinned: {verdict.evidence}"
            return
        await m.candidates.abort(model, actor=ACTOR,
                                 reason=f"{verdict.rule}: {verdict.evidence}",
                                 details=self._evidence(window, verdict, guard.settings))
        await m.quarantine_version(model, servable.digest, actor=ACTOR,
                                   reason=f"canary aborted by the guard: {verdict.rule}")

    async def _promote(self, servable: Servable, window: OutcomeWindow) -> None:
        model, m = servable.model, self._manager
        guard = self.model(model)
        stats = window.stats(self._clock())
        canary = m.entry(model).serving.canary
        if canary is None or canary.servable is not servable or m.entry(model).pinned:
            return
        await m.candidates.promote(
            model, actor=ACTOR,
            reason=f"canary healthy: {stats.failures} of {window.total} requests failed")
        guard.counts["promotions"] = guard.counts.get("promotions", 0) + 1

    def status(self, model: str) -> dict[str, str]:
        guard, now = self.model(model), self._clock()
        out = {"enabled": str(guard.settings.enabled).lower(), "note": guard.note,
               "mode": guard.settings.mode}
        proposal = guard.proposal
        if proposal is not None:
            out.update(proposal=proposal.id, proposal_rule=proposal.rule,
                       proposal_versions=f"{proposal.from_version} -> {proposal.to_version}",
                       proposal_reason=proposal.reason)
            if proposal.approve_at:
                out["proposal_approve_in_s"] = f"{max(0.0, proposal.approve_at - self._wall()):.0f}"
        if guard.watched is not None:
            entry = self._manager.entry(model)
            out["probation_version"] = str(guard.watched.number)
            out["probation_left_s"] = f"{max(0.0, entry.probation_until - self._wall()):.0f}"
            window = self.window_of(guard.watched)
            if window is not None:
                out.update({f"window_{k}": v for k, v in window.stats(now).describe().items()})
        if now < guard.cooldown_until:
            out["cooldown_left_s"] = f"{guard.cooldown_until - now:.0f}"
        out.update({k: str(v) for k, v in guard.counts.items()})
        if self.quality is not None:
            out.update(self.quality.status(model))
        return out

    async def idle(self) -> int:
        """Wait for every scheduled action to finish; how many there were."""
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _bucket(n: int) -> int:
    """n rounded down to a power of two (0 for 0): evidence "changes" when it doubles."""
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def _window_key(servable: Servable, verdict: Verdict) -> str:
    """Names a window rule's evidence: the rule, the version and its failures (its
    requests, for the latency rule) rounded down to a power of two."""
    stats = servable.stats
    n = stats.success.count + stats.fail.count if verdict.rule == "latency" \
        else stats.fail.count
    return f"{verdict.rule}/{servable.number}/{_bucket(n)}"


def flat_details(evidence: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A verdict's evidence (nested JSON values) as an event's details: one string
    per leaf, keys joined by dots (`drop.e_value`), lists as JSON."""
    out: dict[str, str] = {}
    for key, value in evidence.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_details(value, name + "."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        elif value is None:
            out[name] = ""
        elif isinstance(value, float):
            out[name] = f"{value:.6g}"
        else:
            out[name] = str(value)
    return out


def _bounded(details: dict[str, str]) -> dict[str, str]:
    """At most _MAX_DETAILS values of at most 200 characters: an event stays small."""
    return {k[:64]: v[:200] for k, v in list(details.items())[:_MAX_DETAILS]}
