"""Candidates beside the active version, and lifting a quarantine.

- canary: a version that takes a fraction of the requests naming no version;
- shadow: a version that gets a copy of requests off the request path, its
  answers compared with the active version's and never returned.

One candidate per model at a time. Starting one admits it (the same path as
activate: not quarantined, loads, warm-up, compatible) and sets it in the
serving state in one assignment. Ending one (abort) takes it out of its
candidate role; whether it stays loaded is the warm budget's call, so the
warm previous version tried as a canary stays the warm previous version.
Activate and rollback end a running candidate as superseded (`commands.py`).
"""

from __future__ import annotations

from types import MappingProxyType

from sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from sidecar.manager.commands import Change, Commands, Parts, check_pin
from sidecar.manager.entry import SwapResult
from sidecar.manager.version import ModelVersion


class Candidates:
    def __init__(self, parts: Parts, commands: Commands) -> None:
        self._p = parts
        self._commands = commands

    async def start(self, model: str, ref: str, *, kind: str, weight: float = 0.0,
                    actor: str, reason: str = "", force: bool = False) -> ModelVersion:
        """Start a canary (`weight` in (0, 1)) or a shadow for `model`."""
        if kind == "canary" and not 0 < weight < 1:
            raise InvalidInputError(f"canary weight must be between 0 and 100 %, got"
                                    f" {weight * 100:g} %")
        p = self._p
        entry = p.entry(model)
        check_pin(entry, actor)
        version = await p.refs.resolve(entry, ref)
        await p.admission.prepare(version, actor, force=force)
        async with entry.lock:
            serving = entry.serving
            try:
                check_pin(entry, actor)
                if serving.active is None:
                    raise FailedPreconditionError(f"model '{model}' has no active version")
                if version is serving.active:
                    raise FailedPreconditionError(f"{version.label} is already active")
                current = serving.canary or serving.shadow
                if current is not None:
                    raise FailedPreconditionError(
                        f"model '{model}' already has a candidate (version {current.number});"
                        " promote or abort it first")
                p.admission.check_compatible(version, serving.active, force=force)
            except Exception:
                if serving.role(version) is None:
                    p.residency.retire([version])
                raise
            change = Change(p, entry)  # before the assignment: what an undo restores
            loaded = dict(serving.loaded)
            loaded[version.number] = version
            if kind == "canary":
                entry.serving = serving.but(canary=version, canary_weight=weight,
                                            loaded=MappingProxyType(loaded))
            else:
                entry.serving = serving.but(shadow=version, loaded=MappingProxyType(loaded))
            version.held, entry.note = False, ""
            p.swapped(entry, serving.active, actor)
            change.drop(p.residency.evict(entry))
            change.submit(p.events.make(
                model, kind, actor, reason, to_version=version.number, to_digest=version.digest,
                details={"weight_percent": f"{weight * 100:g}"} if kind == "canary" else None))
            await p.notify(entry)
        await change.settle()
        return version

    async def abort(self, model: str, *, actor: str, reason: str = "",
                    details: dict[str, str] | None = None) -> ModelVersion:
        """End the model's canary or shadow: out of its role at once; unloaded after
        it drains unless it is still the warm previous version (or held)."""
        p = self._p
        entry = p.entry(model)
        async with entry.lock:
            serving = entry.serving
            version = serving.canary or serving.shadow
            if version is None:
                raise FailedPreconditionError(f"model '{model}' has no canary or shadow")
            kind = "canary" if version is serving.canary else "shadow"
            change = Change(p, entry)
            entry.serving = serving.but(canary=None, canary_weight=0.0, shadow=None)
            p.swapped(entry, serving.active, actor)
            change.drop(p.residency.evict(entry))
            entry.note = f"{kind} of version {version.number} ended by {actor}: {reason}"
            change.submit(p.events.make(
                model, f"{kind}-abort", actor, reason, from_version=version.number,
                from_digest=version.digest, details=details))
            await p.notify(entry)
        await change.settle()
        return version

    async def promote(self, model: str, *, actor: str, reason: str = "") -> SwapResult:
        """Make the model's canary or shadow the active version (a normal swap)."""
        serving = self._p.entry(model).serving
        version = serving.canary or serving.shadow
        if version is None:
            raise FailedPreconditionError(f"model '{model}' has no canary or shadow")
        return await self._commands.activate(
            model, str(version.number), actor=actor,
            expected_active=str(serving.active.number) if serving.active else "",
            reason=reason or "candidate promoted")

    async def unquarantine(self, digest_prefix: str, *, actor: str, reason: str = "") -> str:
        p = self._p
        text = digest_prefix.strip().lower()
        matches = [d for d in p.quarantine if d.startswith(text)] if len(text) >= 12 else []
        if len(matches) != 1:
            what = "no" if not matches else "several"
            raise NotFoundError(f"{what} quarantined digest(s) match '{digest_prefix[:80]}'"
                                " (give 12+ hex characters)")
        digest = matches[0]
        await p.fleet.hook.mark("", digest, "", actor=actor, lift=True)
        why = p.quarantine.pop(digest)
        try:
            await p.journal.commit(p.events.make("", "unquarantine", actor, reason,
                                                 to_digest=digest))
        except Exception:
            p.quarantine[digest] = why
            raise
        return digest
