"""The serving state of one model: immutable, replaced whole in one assignment.

A request reads `ModelEntry.serving` once and runs on the version it picked
from that snapshot to the end, so a swap can never mix versions in a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.manager.version import ModelVersion

_EMPTY: Mapping[int, ModelVersion] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServingState:
    active: ModelVersion | None = None
    previous: ModelVersion | None = None  # the rollback target, kept loaded
    #: Every READY version a request may name explicitly (active and previous
    #: included), by number.
    loaded: Mapping[int, ModelVersion] = field(default_factory=lambda: _EMPTY)

    def role(self, version: ModelVersion) -> str | None:
        if version is self.active:
            return "ACTIVE"
        if version is self.previous:
            return "PREVIOUS"
        if self.loaded.get(version.number) is version:
            return "WARM"
        return None

    def with_active(self, version: ModelVersion, *, keep_previous: bool) -> ServingState:
        """The state after `version` becomes active; the old active becomes previous."""
        if version is self.active:
            return self
        previous = self.active if keep_previous else None
        loaded = {v.number: v for v in (previous, version) if v is not None}
        return ServingState(version, previous, MappingProxyType(loaded))

    @staticmethod
    def empty() -> ServingState:
        return ServingState()
