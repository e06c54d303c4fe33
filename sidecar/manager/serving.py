"""The serving state of one model: immutable, replaced whole in one assignment.

A request reads `ModelEntry.serving` once and runs on the version it picked
from that snapshot to the end, so a swap can never mix versions in a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    #: A candidate taking `canary_weight` of the requests that name no version.
    canary: ModelVersion | None = None
    canary_weight: float = 0.0
    #: A candidate that gets a copy of requests, off the request path.
    shadow: ModelVersion | None = None

    def role(self, version: ModelVersion) -> str | None:
        if version is self.active:
            return "ACTIVE"
        if version is self.canary:
            return "CANARY"
        if version is self.shadow:
            return "SHADOW"
        if version is self.previous:
            return "PREVIOUS"
        if self.loaded.get(version.number) is version:
            return "WARM"
        return None

    def but(self, **changes: object) -> ServingState:
        """A copy with some fields changed (canary and shadow carried along)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @staticmethod
    def empty() -> ServingState:
        return ServingState()
