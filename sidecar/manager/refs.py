"""Finding a model's versions: by number or digest prefix, and on disk.

`References` turns what a command names into a `ModelVersion` (refreshing the
model's version list from the repository when the name is new) and checks a
command's `expected_active` precondition. It changes no serving state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from sidecar.loader.onnx import FileIdentity
from sidecar.manager.entry import ModelEntry
from sidecar.manager.version import ModelVersion, Phase
from sidecar.source.repository import parse_version, scan_model

MIN_DIGEST_PREFIX = 12
Identify = Callable[[ModelVersion], Awaitable[FileIdentity | None]]


def _is_number(text: str) -> bool:
    return parse_version(text) is not None and len(text) < MIN_DIGEST_PREFIX


class References:
    def __init__(self, repository: Path, identify: Identify) -> None:
        self._repository = repository
        self._identify = identify

    def refresh(self, entry: ModelEntry) -> None:
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

    async def resolve(self, entry: ModelEntry, ref: str) -> ModelVersion:
        """A version by number ("3") or by digest prefix (12+ hex characters)."""
        text = ref.strip().lower()
        if _is_number(text):
            number = int(text)
            if number not in entry.versions:
                self.refresh(entry)
            version = entry.versions.get(number)
            if version is None:
                raise NotFoundError(f"model '{entry.name}' has no version {number}")
            return version
        if len(text) < MIN_DIGEST_PREFIX or any(c not in "0123456789abcdef" for c in text):
            raise InvalidInputError(
                f"'{ref[:80]}' is neither a version number nor a digest prefix of"
                f" {MIN_DIGEST_PREFIX}+ hex characters")
        self.refresh(entry)
        for version in list(entry.versions.values()):
            await self._identify(version)
        matches = [v for v in entry.versions.values() if v.digest.startswith(text)]
        if not matches:
            raise NotFoundError(f"model '{entry.name}' has no version with digest {text}...")
        if len(matches) > 1:
            numbers = ", ".join(str(v.number) for v in matches)
            raise InvalidInputError(f"digest prefix {text} matches versions {numbers}")
        return matches[0]

    @staticmethod
    def check_expected(entry: ModelEntry, expected: str) -> None:
        """Refuse unless `expected` (number, digest prefix or "none") names the active
        version: a compare-and-swap for tools that act on what they last saw."""
        if not expected:
            return
        active = entry.serving.active
        text = expected.strip().lower()
        if active is None:
            matches = text in {"none", "0"}
        elif _is_number(text):
            matches = int(text) == active.number
        else:
            matches = len(text) >= MIN_DIGEST_PREFIX and active.digest.startswith(text)
        if not matches:
            current = f"version {active.number} ({active.digest[:12]})" if active else "none"
            raise FailedPreconditionError(
                f"model '{entry.name}': expected active '{expected[:80]}', but the active"
                f" version is {current}")
