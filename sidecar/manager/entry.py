"""A model as the manager holds it, and the result of a swap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion, Phase
from sidecar.state.store import SavedModel


@dataclass(eq=False)
class ModelEntry:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    serving: ServingState = field(default_factory=ServingState.empty)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pinned: bool = False
    #: Unloaded by a command: stays unloaded across restarts until loaded again.
    unloaded: bool = False
    #: The highest version number the watcher (or the first start) has handled.
    watermark: int = 0
    #: Guard settings set by command (over the model's sidecar.json and defaults).
    guard: dict[str, str] = field(default_factory=dict)
    #: Unix time until which the active version is on the guard's probation (0:
    #: none); persisted, so a restart goes on judging it.
    probation_until: float = 0.0
    #: Why the last candidate (canary or shadow) ended, for `ctl status`.
    note: str = ""
    #: What the saved state said of this model at start, written back unchanged
    #: while the model has not served since (a failed restore must not forget it).
    kept: SavedModel | None = None

    def state_of(self, version: ModelVersion) -> str:
        """The state reported for a version: its role while READY, else its phase."""
        if version.phase is Phase.READY:
            return self.serving.role(version) or Phase.READY.name
        return version.phase.name

    def skipped_reason(self, version: ModelVersion) -> str:
        """Why a version above the active one on disk is not serving ("" if none)."""
        active = self.serving.active
        if (version.phase is not Phase.UNLOADED or active is None
                or version.number <= active.number or version.number > self.watermark):
            return ""
        return (f"not activated automatically: version {version.number} is at or below the"
                f" watermark {self.watermark} (a version the sidecar already handled, e.g."
                f" rolled back from); activate it by command: sidecar ctl activate"
                f" {self.name} {version.number}")


@dataclass(frozen=True, slots=True)
class SwapResult:
    model: str
    from_version: ModelVersion | None
    to_version: ModelVersion
    swap_ns: int  # the pointer swap itself
    total_ns: int  # the whole command, load included
