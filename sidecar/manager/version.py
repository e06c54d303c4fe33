"""One model version as the manager tracks it: phase, identity, its live session.

A version is a number in a model's folder plus the digest of its file. While
READY it has a `Servable` (a loaded session, see `servable.py`); a version
activated again while its old session drains gets a new one. All mutation
happens on the event loop thread.

`created` is when the version appeared, as well as the file system tells it
when the sidecar first sees the version (see `appeared`).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
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


def appeared(path: Path) -> float:
    """When the version of model file `path` appeared (unix seconds; 0.0: unknown):
    the earliest of its folder's and its file's mtime and ctime, and birth time
    where the platform reports one. Linux has birth times only through statx(2),
    which Python's os.stat does not use (st_birthtime is macOS, BSD and, from
    3.12, Windows), so on Linux this is the folder's or file's oldest change time
    when first seen: a later copy or rename into the folder or a touch cannot make
    it older, but a file copied in with its times kept (cp -p, rsync -t, tar)
    dates it to the original's mtime."""
    times: list[float] = []
    for item in (path.parent, path):
        try:
            st = os.stat(item)
        except OSError:
            continue
        times += [st.st_mtime, st.st_ctime]
        birth = getattr(st, "st_birthtime", 0.0)
        if birth > 0:
            times.append(birth)
    return min(times, default=0.0)


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
    #: When the version appeared (unix seconds), as first seen: see `appeared`.
    #: 0.0 until its folder or file could be read. Not persisted: after a
    #: restart it is read again from the folder and file as they are then.
    created: float = 0.0
    #: The git commit that last changed the file (`Commit.as_dict()`; {}: none or
    #: not a git work tree), and when and for which file state it was read.
    commit: dict[str, str] = field(default_factory=dict)
    commit_stat: tuple[int, ...] = ()
    commit_read: float = 0.0  # time.monotonic()

    def __post_init__(self) -> None:
        if not self.created:
            self.created = appeared(self.path)

    def note_created(self) -> float:
        """`created`, read again if it was not known yet (the folder was unreadable)."""
        if not self.created:
            self.created = appeared(self.path)
        return self.created

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
