"""Admitting a version to serve: the one path activate, load, canary, shadow
and the watcher all take.

A version is admitted when its file exists, it loads and passes its warm-up
run, it is not quarantined (unless forced), and, to replace or stand beside
the active version, its signature is compatible with the active one's (unless
forced). Every refusal is a `FailedPreconditionError` with the reason: the
same failure gets the same status whichever command met it.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.errors import FailedPreconditionError
from sidecar.manager.compat import incompatibilities
from sidecar.manager.loading import VersionLoading
from sidecar.manager.version import ModelVersion, Phase


class Admission:
    def __init__(self, loading: VersionLoading, quarantine: Mapping[str, str]) -> None:
        self._loading = loading
        self._quarantine = quarantine

    async def quarantined(self, version: ModelVersion) -> str:
        """Why the version's bytes are quarantined ("" if they are not)."""
        digest = version.digest or ((await self._loading.identify(version)) or version).digest
        return self._quarantine.get(digest, "") if digest else ""

    async def prepare(self, version: ModelVersion, actor: str, *, force: bool) -> None:
        """Off the model's lock: refuse quarantined bytes, then load and warm up."""
        why = await self.quarantined(version)
        if why and not force:
            raise FailedPreconditionError(
                f"{version.label} is quarantined ({why}); unquarantine it or use force")
        if not await self._loading.ensure(version, actor):
            raise FailedPreconditionError(f"{version.label} cannot be loaded: {version.reason}")

    @staticmethod
    def check_compatible(version: ModelVersion, active: ModelVersion | None, *, force: bool,
                         hint: str = "force to use it anyway") -> None:
        """Under the lock: the version may serve the active version's clients."""
        if version.phase is not Phase.READY:
            raise FailedPreconditionError(f"{version.label} was unloaded meanwhile")
        if active is None or active is version or force:
            return
        assert active.loaded is not None and version.loaded is not None
        problems = incompatibilities(active.loaded.signature, version.loaded.signature)
        if problems:
            raise FailedPreconditionError(
                f"{version.label} is not compatible with active version {active.number}:"
                f" {'; '.join(problems)} ({hint})")
