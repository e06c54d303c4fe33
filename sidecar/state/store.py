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
import math
import os
import time
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
    #: Unloaded by a command: stays unloaded until loaded again.
    unloaded: bool = False
    #: Unix time until which the active version is on the guard's probation.
    probation_until: float = 0.0
    #: The canary or shadow running when this was saved: (kind, version).
    candidate: tuple[str, VersionRef] | None = None
    #: The `serve` declaration of sidecar.json last applied (docs/gitops.md).
    declared: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidate"] = ({"kind": self.candidate[0], **asdict(self.candidate[1])}
                             if self.candidate else None)
        return data

    @staticmethod
    def from_json(m: dict[str, Any]) -> SavedModel:
        active = VersionRef.from_json(m.get("active"))
        candidate = m.get("candidate")
        ref = VersionRef.from_json(candidate)
        probation = float(m.get("probation_until", 0.0))
        if not math.isfinite(probation):
            raise ValueError("probation_until is not a finite number")
        return SavedModel(
            active,
            VersionRef.from_json(m.get("previous")),
            bool(m.get("pinned", False)),
            int(m.get("watermark", 0)),
            {str(k): str(v) for k, v in m.get("guard", {}).items()},
            # Before this field existed, a saved model without an active version
            # was one unloaded by command.
            bool(m.get("unloaded", active is None)),
            probation,
            (str(candidate["kind"]), ref) if isinstance(candidate, dict) and ref else None,
            str(m.get("declared", "")),
        )


@dataclass(frozen=True, slots=True)
class SavedState:
    models: dict[str, SavedModel] = field(default_factory=dict)
    #: digest -> reason it was quarantined
    quarantine: dict[str, str] = field(default_factory=dict)
    #: The model repository this state describes (absolute path, as configured).
    repository: str = ""
    #: The highest event sequence number when this was saved.
    last_seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "repository": self.repository,
            "last_seq": self.last_seq,
            "models": {name: m.to_json() for name, m in sorted(self.models.items())},
            "quarantine": dict(sorted(self.quarantine.items())),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> SavedState:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown state format {data.get('format')!r}")
        models = {str(name): SavedModel.from_json(m)
                  for name, m in data.get("models", {}).items()}
        quarantine = {str(k): str(v) for k, v in data.get("quarantine", {}).items()}
        return SavedState(models, quarantine, str(data.get("repository", "")),
                          int(data.get("last_seq", 0)))


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

    #: set when `load` found the file damaged (and set it aside)
    damaged = False

    def load(self) -> SavedState:
        """The saved state, or an empty one (no file yet, or an unreadable one,
        which is logged and kept aside as state.json.corrupt for inspection)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return SavedState()
        except OSError as exc:  # a directory in its place, unreadable...
            self.damaged = True
            self.set_aside("corrupt", f"state file unreadable ({exc.strerror or exc});"
                           " starting without it")
            return SavedState()
        try:
            return SavedState.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError) as exc:
            self.damaged = True
            self.set_aside("corrupt", f"state file unreadable ({exc});"
                           " starting without saved state")
            return SavedState()

    def set_aside(self, suffix: str, why: str) -> None:
        """Move the state file out of the way (kept for inspection), with a warning."""
        aside = self.path.with_name(f"{STATE_FILE}.{suffix}-{time.time_ns()}")
        try:
            os.replace(self.path, aside)
            kept = str(aside)
        except OSError as exc:
            kept = f"not set aside: {exc.strerror or exc}"
        log.error(why, extra={"path": str(self.path), "kept_as": kept})

    def peek_last_seq(self) -> int:
        """The last event sequence number the state file recorded (0 if unknown),
        without judging the file: the event log never numbers below it."""
        try:
            value = json.loads(self.path.read_bytes()).get("last_seq", 0)
        except (OSError, ValueError, AttributeError, RecursionError):
            return 0
        return value if isinstance(value, int) and 0 < value < 2**62 else 0

    def save(self, state: SavedState) -> None:
        data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        write_atomically(self.path, data)
