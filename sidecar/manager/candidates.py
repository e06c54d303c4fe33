"""Candidates beside the active version, and the quarantine.

- canary: a version that takes a fraction of the requests naming no version;
- shadow: a version that gets a copy of requests off the request path, its
  answers compared with the active version's and never returned;
- quarantine: digests that neither the watcher nor the guard may activate
  (an automatic rollback quarantines the version it rolled back from).

One candidate per model at a time. Starting one loads and warms it first,
checks its signature against the active version's (unless forced), then sets
it in the serving state in one assignment, like a swap. Ending one (abort)
takes it out first and unloads it after it drains.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from sidecar.manager.compat import incompatibilities
from sidecar.manager.entry import ModelEntry
from sidecar.manager.version import ModelVersion, Phase

if TYPE_CHECKING:
    from sidecar.manager.manager import ModelManager


class Candidates:
    def __init__(self, manager: ModelManager) -> None:
        self._m = manager

    async def _prepare(self, entry: ModelEntry, ref: str, *, actor: str, force: bool
                       ) -> ModelVersion:
        m = self._m
        version = await m.resolve(entry, ref)
        identity = await m.identify(version)
        digest = identity.digest if identity else version.digest
        if digest in m.quarantine and not force:
            raise FailedPreconditionError(
                f"{version.label} is quarantined ({m.quarantine[digest]});"
                " unquarantine it or use force")
        if not await m.loading.ensure(version, actor):
            raise FailedPreconditionError(f"{version.label} cannot be loaded: {version.reason}")
        return version

    def _check(self, entry: ModelEntry, version: ModelVersion, *, force: bool) -> None:
        serving = entry.serving
        if serving.active is None:
            raise FailedPreconditionError(f"model '{entry.name}' has no active version")
        if version is serving.active:
            raise FailedPreconditionError(f"{version.label} is already active")
        if serving.canary is not None or serving.shadow is not None:
            current = serving.canary or serving.shadow
            assert current is not None
            raise FailedPreconditionError(
                f"model '{entry.name}' already has a candidate (version {current.number});"
                " promote or abort it first")
        if version.phase is not Phase.READY:
            raise FailedPreconditionError(f"{version.label} was unloaded meanwhile")
        if not force:
            assert serving.active.loaded is not None and version.loaded is not None
            problems = incompatibilities(serving.active.loaded.signature,
                                         version.loaded.signature)
            if problems:
                raise FailedPreconditionError(
                    f"{version.label} is not compatible with active version"
                    f" {serving.active.number}: {'; '.join(problems)} (force to use anyway)")

    async def start(self, model: str, ref: str, *, kind: str, weight: float = 0.0,
                    actor: str, reason: str = "", force: bool = False) -> ModelVersion:
        """Start a canary (`weight` in (0, 1)) or a shadow for `model`."""
        if kind == "canary" and not 0 < weight < 1:
            raise InvalidInputError(f"canary weight must be between 0 and 100 %, got"
                                    f" {weight * 100:g} %")
        m = self._m
        entry = m.entry(model)
        m.check_pin(entry, actor)
        version = await self._prepare(entry, ref, actor=actor, force=force)
        async with entry.lock:
            try:
                m.check_pin(entry, actor)
                self._check(entry, version, force=force)
            except Exception:
                if entry.serving.role(version) is None:
                    await m.loading.unload(version)
                raise
            loaded = dict(entry.serving.loaded)
            loaded[version.number] = version
            if kind == "canary":
                entry.serving = entry.serving.but(canary=version, canary_weight=weight,
                                                  loaded=MappingProxyType(loaded))
            else:
                entry.serving = entry.serving.but(shadow=version,
                                                  loaded=MappingProxyType(loaded))
            version.held = False
            m.swapped(entry, entry.serving.active, actor)
            await m.journal.commit(m.events.make(
                model, kind, actor, reason, to_version=version.number, to_digest=version.digest,
                details={"weight_percent": f"{weight * 100:g}"} if kind == "canary" else None))
            await m.notify(entry)
        return version

    async def abort(self, model: str, *, actor: str, reason: str = "",
                    details: dict[str, str] | None = None) -> ModelVersion:
        """End the model's canary or shadow: out of serving at once, then unloaded."""
        m = self._m
        entry = m.entry(model)
        async with entry.lock:
            serving = entry.serving
            version = serving.canary or serving.shadow
            if version is None:
                raise FailedPreconditionError(f"model '{model}' has no canary or shadow")
            kind = "canary" if version is serving.canary else "shadow"
            loaded = {n: v for n, v in serving.loaded.items() if v is not version}
            entry.serving = serving.but(canary=None, canary_weight=0.0, shadow=None,
                                        loaded=MappingProxyType(loaded))
            await m.journal.commit(m.events.make(
                model, f"{kind}-abort", actor, reason, from_version=version.number,
                from_digest=version.digest, details=details))
            await m.notify(entry)
        await m.loading.unload(version)
        return version

    async def promote(self, model: str, *, actor: str, reason: str = "") -> None:
        """Make the model's canary or shadow the active version (a normal swap)."""
        m = self._m
        serving = m.entry(model).serving
        version = serving.canary or serving.shadow
        if version is None:
            raise FailedPreconditionError(f"model '{model}' has no canary or shadow")
        await m.activate(model, str(version.number), actor=actor,
                         expected_active=str(serving.active.number) if serving.active else "",
                         reason=reason or "candidate promoted")

    async def quarantine(self, model: str, ref: str, *, actor: str, reason: str) -> str:
        """Quarantine a version's digest (by version number or digest prefix)."""
        m = self._m
        entry = m.entry(model)
        version = await m.resolve(entry, ref)
        digest = version.digest or ((await m.identify(version)) or version).digest
        if not digest:
            raise NotFoundError(f"{version.label} has no readable file to quarantine")
        m.quarantine[digest] = reason or f"quarantined by {actor}"
        await m.journal.commit(m.events.make(model, "quarantine", actor, reason,
                                             to_version=version.number, to_digest=digest))
        return digest

    async def unquarantine(self, digest_prefix: str, *, actor: str, reason: str = "") -> str:
        m = self._m
        text = digest_prefix.strip().lower()
        matches = [d for d in m.quarantine if d.startswith(text)] if len(text) >= 12 else []
        if len(matches) != 1:
            what = "no" if not matches else "several"
            raise NotFoundError(f"{what} quarantined digest(s) match '{digest_prefix}'"
                                " (give 12+ hex characters)")
        del m.quarantine[matches[0]]
        await m.journal.commit(m.events.make("", "unquarantine", actor, reason,
                                             to_digest=matches[0]))
        return matches[0]
