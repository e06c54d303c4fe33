"""The guard at run time: watches versions and acts through the manager.

`observe` is on the request path: it records the outcome in the version's
window and, for a version under watch, applies the rules; an action (rollback,
canary abort or promotion) is scheduled as a task, so no request waits for it.
What is watched:

- the active version during its probation after an activation (not after a
  rollback by the guard itself: the cooldown protects against flapping);
- the canary, against the same rules, with the active version's live p99 as
  its latency baseline; promoted after a healthy span;
- the shadow (see `shadow.py`), by agreement with the active version.

Nothing automatic happens on a pinned model, within a model's cooldown, or
when the previous version is not warm (an event says so, once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import SidecarError
from sidecar.guard.rules import GuardSettings, Verdict, judge
from sidecar.guard.window import OutcomeWindow
from sidecar.manager.entry import ModelEntry
from sidecar.manager.manager import ModelManager
from sidecar.manager.version import ModelVersion, Phase

log = logging.getLogger("sidecar.guard")

ACTOR = "guard"
_LATENCY_EVERY = 16  # observations between latency checks (a sort of the window)

#: model name -> its settings file's "guard" object (may be empty)
SettingsSource = Callable[[str], dict[str, Any]]


@dataclass(slots=True)
class ModelGuard:
    settings: GuardSettings
    watched: ModelVersion | None = None  # the active version on probation
    probation_until: float = 0.0
    baseline: tuple[float, int] = (0.0, 0)  # previous version's p99 ns, samples
    cooldown_until: float = 0.0
    pending: bool = False  # an action is scheduled
    canary_since: float = 0.0
    note: str = ""  # the last thing the guard could not do, for status
    counts: dict[str, int] = field(default_factory=dict)


class Guard:
    def __init__(self, manager: ModelManager, *, defaults: GuardSettings,
                 settings_source: SettingsSource, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._manager = manager
        self._defaults = defaults
        self._source = settings_source
        self._clock = clock
        self._models: dict[str, ModelGuard] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        manager.add_swap_hook(self.on_swap)

    # ---- settings ----------------------------------------------------------------

    def settings_for(self, model: str) -> GuardSettings:
        """Defaults, then the model's sidecar.json "guard", then commands' overrides."""
        entry = self._manager.entry(model)
        settings = self._defaults
        from_file = self._source(model)
        if from_file:
            try:
                settings = settings.updated(from_file)
            except ValueError as exc:
                log.error("bad guard settings in the model's file; ignored",
                          extra={"model": model, "reason": str(exc)})
        return settings.updated(entry.guard) if entry.guard else settings

    def model(self, name: str) -> ModelGuard:
        guard = self._models.get(name)
        if guard is None:
            guard = self._models[name] = ModelGuard(self.settings_for(name))
        return guard

    def reload(self, name: str) -> GuardSettings:
        """Re-read a model's settings (after a change by command or file)."""
        guard = self.model(name)
        guard.settings = self.settings_for(name)
        return guard.settings

    def reload_changed(self, name: str) -> dict[str, str]:
        """Re-read a model's settings; the ones that changed, by name ({} if none)."""
        before = self.model(name).settings
        after = self.reload(name)
        return {k: str(v) for k, v in after.to_dict().items() if before.to_dict()[k] != v}

    def _window(self, settings: GuardSettings) -> OutcomeWindow:
        return OutcomeWindow(settings.window_requests, settings.window_s)

    # ---- hooks from the manager and the data plane -----------------------------

    def on_swap(self, entry: ModelEntry, before: ModelVersion | None, actor: str) -> None:
        """After a change of what serves: fresh windows, probation, latency baseline."""
        guard = self.model(entry.name)
        now, serving = self._clock(), entry.serving
        active = serving.active
        if active is not None and active is not before:
            if before is not None and before.window is not None:
                p99, samples = before.window.latency_percentile(99, now)
                guard.baseline = (p99, samples)
            active.window = self._window(guard.settings)
            if actor == ACTOR or not guard.settings.enabled:
                guard.watched = None  # no probation after the guard's own rollback
            else:
                guard.watched = active
                guard.probation_until = now + guard.settings.probation_s
        for candidate in (serving.canary, serving.shadow):
            if candidate is not None and candidate.window is None:
                candidate.window = self._window(guard.settings)
                guard.canary_since = now

    def start(self) -> None:
        """Watch windows for what serves after the restore (trusted: no probation)."""
        for entry in self._manager.entries():
            guard = self.model(entry.name)
            if entry.serving.active is not None and entry.serving.active.window is None:
                entry.serving.active.window = self._window(guard.settings)

    def nonfinite_check(self, model: str) -> bool:
        guard = self._models.get(model)
        return guard is not None and guard.settings.fail_on_nonfinite

    def observe(self, version: ModelVersion, ok: bool, latency_ns: int) -> None:
        """Record one server-side outcome; act (later) if a watched version is bad."""
        window = version.window
        if window is None:
            return
        now = self._clock()
        window.record(now, ok, latency_ns)
        guard = self._models.get(version.model)
        if guard is None or guard.pending or not guard.settings.enabled:
            return
        if version is guard.watched:
            if now > guard.probation_until:
                guard.watched = None  # trusted from now on
                return
            verdict = self._judge(window, guard, now, guard.baseline)
            if verdict.bad:
                self._schedule(guard, self._rollback(version, verdict, window))
            return
        serving = self._manager.entry(version.model).serving
        if version is serving.canary:
            active = serving.active
            baseline = (active.window.latency_percentile(99, now)
                        if active is not None and active.window is not None else (0.0, 0))
            verdict = self._judge(window, guard, now, baseline)
            if verdict.bad:
                self._schedule(guard, self._abort(version, verdict, window))
            elif (window.total >= guard.settings.canary_promote_requests
                  and now - guard.canary_since >= guard.settings.canary_promote_s):
                self._schedule(guard, self._promote(version, window))

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

    async def _rollback(self, version: ModelVersion, verdict: Verdict, window: OutcomeWindow
                        ) -> None:
        model, m = version.model, self._manager
        guard, now = self.model(model), self._clock()
        entry = m.entry(model)
        if entry.serving.active is not version:
            return  # something else changed it meanwhile
        why = ""
        if entry.pinned:
            why = "the model is pinned"
        elif now < guard.cooldown_until:
            why = f"cooldown: {guard.cooldown_until - now:.0f} s left"
        elif entry.serving.previous is None or entry.serving.previous.phase is not Phase.READY:
            why = "no previous version is warm"
        if why:
            guard.watched, guard.note = None, f"version {version.number} is bad but not" \
                f" rolled back ({why}): {verdict.evidence}"
            await m.note(model, "guard-held", actor=ACTOR, reason=guard.note,
                         version=version.number)
            return
        details = self._evidence(window, verdict, guard.settings)
        await m.rollback(model, actor=ACTOR, expected_active=str(version.number),
                         reason=f"{verdict.rule}: {verdict.evidence}", details=details)
        guard.cooldown_until = self._clock() + guard.settings.cooldown_s
        guard.counts["rollbacks"] = guard.counts.get("rollbacks", 0) + 1
        await m.candidates.quarantine(model, version.digest, actor=ACTOR,
                                      reason=f"rolled back by the guard: {verdict.rule}")

    async def _abort(self, version: ModelVersion, verdict: Verdict, window: OutcomeWindow
                     ) -> None:
        model, m = version.model, self._manager
        guard = self.model(model)
        if m.entry(model).pinned:
            guard.note = f"canary {version.number} is bad; model pinned: {verdict.evidence}"
            return
        await m.candidates.abort(model, actor=ACTOR,
                                 reason=f"{verdict.rule}: {verdict.evidence}",
                                 details=self._evidence(window, verdict, guard.settings))
        await m.candidates.quarantine(model, version.digest, actor=ACTOR,
                                      reason=f"canary aborted by the guard: {verdict.rule}")

    async def _promote(self, version: ModelVersion, window: OutcomeWindow) -> None:
        model, m = version.model, self._manager
        guard = self.model(model)
        stats = window.stats(self._clock())
        if m.entry(model).serving.canary is not version or m.entry(model).pinned:
            return
        await m.candidates.promote(
            model, actor=ACTOR,
            reason=f"canary healthy: {stats.failures} of {window.total} requests failed")
        guard.counts["promotions"] = guard.counts.get("promotions", 0) + 1

    def status(self, model: str) -> dict[str, str]:
        guard, now = self.model(model), self._clock()
        out = {"enabled": str(guard.settings.enabled).lower(), "note": guard.note}
        if guard.watched is not None:
            out["probation_version"] = str(guard.watched.number)
            out["probation_left_s"] = f"{max(0.0, guard.probation_until - now):.0f}"
            if guard.watched.window is not None:
                out.update({f"window_{k}": v for k, v in
                            guard.watched.window.stats(now).describe().items()})
        if now < guard.cooldown_until:
            out["cooldown_left_s"] = f"{guard.cooldown_until - now:.0f}"
        out.update({k: str(v) for k, v in guard.counts.items()})
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
