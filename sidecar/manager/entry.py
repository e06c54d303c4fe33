"""A model as the manager holds it, and the result of a swap."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
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
    #: The `serve` declaration of the model's sidecar.json last applied ("": none);
    #: persisted: a declaration is applied when it changes (docs/gitops.md).
    declared: str = ""
    #: What sidecar.json declares now ("": nothing), and why applying it was last
    #: refused ("": it was not); set by the repository sync.
    declaring: str = ""
    refusal: str = ""

    def state_of(self, version: ModelVersion) -> str:
        """The state reported for a version: its role while READY, else its phase."""
        if version.phase is Phase.READY:
            return self.serving.role(version) or Phase.READY.name
        return version.phase.name

    def conflict(self, quarantine: Mapping[str, str]) -> str:
        """Why the pod does not serve what sidecar.json declares ("" if it does, or
        nothing is declared)."""
        text, active = self.declaring, self.serving.active
        if not text:
            return ""
        number = int(text) if text.isdigit() and len(text) < 12 else 0
        if active is not None and (active.number == number if number
                                   else active.digest.startswith(text)):
            return ""
        if number:
            declared = self.versions.get(number)
            digests = [declared.digest] if declared is not None and declared.digest else []
        else:
            digests = [d for d in quarantine if d.startswith(text)]
        why = next((f"quarantined ({quarantine[d]})" for d in digests if d in quarantine), "")
        if not why:
            if self.pinned:
                why = "the model is pinned"
            elif self.refusal:
                why = self.refusal
            elif self.declared == text:
                why = "changed since by a command or the guard"
            else:
                why = "not applied yet"
        serving = f"version {active.number}" if active is not None else "nothing"
        return f"sidecar.json declares serve: {text}, the pod serves {serving}: {why}"

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
