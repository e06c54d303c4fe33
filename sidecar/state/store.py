"""The persisted serving state: one JSON file, replaced atomically.

Written with write-temp, fsync, rename, fsync-directory, so after a crash at any
instant the file is either the old state or the new one, never a mix or a
truncation. It records, per model, the active and previous versions by number
*and digest* (so a restart restores the same bytes, not "the newest on disk"),
whether the model is pinned, and the quarantined digests.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.state")

STATE_FILE = "state.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class VersionRef:
    number: int
    digest: str

    @staticmethod
    def from_json(data: Any) -> VersionRef | None:
        if not isinstance(data, dict):
            return None
        return VersionRef(int(data["number"]), str(data["digest"]))


@dataclass(frozen=True, slots=True)
class SavedModel:
    active: VersionRef | None = None
    previous: VersionRef | None = None
    pinned: bool = False
    #: The highest version the watcher has handled: only higher ones are new.
    watermark: int = 0
    #: Guard settings set by command, as strings (see sidecar.guard.rules).
    guard: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SavedState:
    models: dict[str, SavedModel] = field(default_factory=dict)
    #: digest -> reason it was quarantined
    quarantine: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "models": {name: asdict(m) for name, m in sorted(self.models.items())},
            "quarantine": dict(sorted(self.quarantine.items())),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> SavedState:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown state format {data.get('format')!r}")
        models = {
            str(name): SavedModel(
                VersionRef.from_json(m.get("active")),
                VersionRef.from_json(m.get("previous")),
                bool(m.get("pinned", False)),
                int(m.get("watermark", 0)),
                {str(k): str(v) for k, v in m.get("guard", {}).items()},
            )
            for name, m in data.get("models", {}).items()
        }
        quarantine = {str(k): str(v) for k, v in data.get("quarantine", {}).items()}
        return SavedState(models, quarantine)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def open(self) -> None:
        """Create the directory; fail early (OSError) if it is not writable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()

    def load(self) -> SavedState:
        """The saved state, or an empty one (no file yet, or an unreadable one,
        which is logged and kept aside as state.json.corrupt for inspection)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return SavedState()
        try:
            return SavedState.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(STATE_FILE + ".corrupt")
            os.replace(self.path, aside)
            log.error("state file unreadable; starting without saved state",
                      extra={"path": str(self.path), "kept_as": str(aside), "reason": str(exc)})
            return SavedState()

    def save(self, state: SavedState) -> None:
        data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        write_atomically(self.path, data)
