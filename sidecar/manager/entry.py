"""A model as the manager holds it, and the result of a swap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion, Phase


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

    def state_of(self, version: ModelVersion) -> str:
        """The state reported for a version: its role while READY, else its phase."""
        if version.phase is Phase.READY:
            return self.serving.role(version) or Phase.READY.name
        return version.phase.name


@dataclass(frozen=True, slots=True)
class SwapResult:
    model: str
    from_version: ModelVersion | None
    to_version: ModelVersion
    swap_ns: int  # the pointer swap itself
    total_ns: int  # the whole command, load included
