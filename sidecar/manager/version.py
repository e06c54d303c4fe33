"""One model version as the manager tracks it: phase, identity, its live session.

A version is a number in a model's folder plus the digest of its file. While
READY it has a `Servable` (a loaded session, see `servable.py`); a version
activated again while its old session drains gets a new one. All mutation
happens on the event loop thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from sidecar.loader.onnx import FileIdentity, LoadedModel
from sidecar.manager.servable import Servable, VersionStats

_NO_STATS = VersionStats()


class Phase(enum.Enum):
    """Lifecycle of a version. Its *role* (ACTIVE, PREVIOUS, WARM) comes from
    the serving state while it is READY; see `ModelEntry.state_of`."""

    UNLOADED = "UNLOADED"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(eq=False, slots=True)
class ModelVersion:
    model: str
    number: int
    path: Path
    phase: Phase = Phase.UNLOADED
    reason: str = ""
    #: The live session while READY (and while UNLOADING, until it drained).
    servable: Servable | None = None
    #: The file as last identified (digest, size, times); None until read.
    identity: FileIdentity | None = None
    loaded_at: float = 0.0  # unix seconds
    activated_at: float = 0.0
    deactivated_at: float = 0.0
    #: Loaded on request (`load`, or the watcher's `load` policy): kept warm
    #: beyond the warm-version budget, within `max_loaded`.
    held: bool = False

    @property
    def label(self) -> str:
        return f"model '{self.model}' version {self.number}"

    @property
    def loaded(self) -> LoadedModel | None:
        return self.servable.loaded if self.servable is not None else None

    @property
    def stats(self) -> VersionStats:
        """The live session's statistics (empty while not loaded)."""
        return self.servable.stats if self.servable is not None else _NO_STATS

    @property
    def inflight(self) -> int:
        return self.servable.inflight if self.servable is not None else 0

    @property
    def digest(self) -> str:
        """The digest of the loaded bytes, else of the file as last identified."""
        if self.servable is not None:
            return self.servable.digest
        return self.identity.digest if self.identity else ""
