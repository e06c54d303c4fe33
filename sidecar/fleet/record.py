"""What a fleet keeps in etcd, as JSON values under one prefix per fleet.

    /sidecar/v1/<fleet>/models/<model>         FleetModel: what serves, fleet-wide
                                               (written with compare-and-swap)
    /sidecar/v1/<fleet>/quarantine/<digest>    QuarantineMark: bytes no replica serves
    /sidecar/v1/<fleet>/members/<replica>      Member: a live replica (leased)

Pure data and its JSON form; nothing here talks to etcd or the manager. Values
that do not parse are reported by the caller and ignored, never fatal: a replica
keeps serving whatever another wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.state.store import VersionRef

ROOT = "/sidecar/v1"
#: Fleet and replica names: what Kubernetes allows in a name, and nothing a key
#: could be confused by.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def name_problem(kind: str, name: str) -> str:
    """Why `name` cannot be a fleet's or replica's name ("" if it can)."""
    if _NAME.fullmatch(name):
        return ""
    return (f"{kind} name {name[:64]!r}: 1-128 of letters, digits, '_', '-', '.', starting"
            " with a letter or digit")


def prefix(fleet: str) -> str:
    return f"{ROOT}/{fleet}/"


def model_key(fleet: str, model: str) -> str:
    return f"{prefix(fleet)}models/{model}"


def quarantine_key(fleet: str, digest: str) -> str:
    return f"{prefix(fleet)}quarantine/{digest}"


def member_key(fleet: str, replica: str) -> str:
    return f"{prefix(fleet)}members/{replica}"


def parse_key(fleet: str, key: str) -> tuple[str, str]:
    """(kind, name) of a key under the fleet's prefix: kind is "models",
    "quarantine" or "members" ("" for anything else)."""
    rest = key.removeprefix(prefix(fleet))
    kind, _, name = rest.partition("/")
    if rest == key or kind not in ("models", "quarantine", "members") or not name:
        return "", ""
    return kind, name


def _ref(data: Any) -> VersionRef | None:
    if not isinstance(data, dict):
        return None
    number, digest = data.get("number"), data.get("digest")
    if not isinstance(number, int) or isinstance(number, bool) or number <= 0 \
            or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a version reference: {json.dumps(data)[:120]}")
    return VersionRef(number, digest)


def _ref_json(ref: VersionRef | None) -> dict[str, Any] | None:
    return {"number": ref.number, "digest": ref.digest} if ref else None


@dataclass(frozen=True, slots=True)
class Origin:
    """Who made the last change of a fleet record, for `ctl fleet` and events."""

    replica: str = ""
    actor: str = ""
    action: str = ""
    reason: str = ""
    time: float = 0.0

    def describe(self) -> str:
        text = f"{self.action} by {self.actor or '?'} on {self.replica or '?'}"
        return text + (f": {self.reason}" if self.reason else "")


def _origin(data: Any) -> Origin:
    if not isinstance(data, dict):
        return Origin()
    return Origin(str(data.get("replica", ""))[:128], str(data.get("actor", ""))[:64],
                  str(data.get("action", ""))[:64], str(data.get("reason", ""))[:1024],
                  float(data.get("time", 0.0)))


@dataclass(frozen=True, slots=True)
class FleetModel:
    """One model's serving state, shared by every replica of the fleet."""

    active: VersionRef | None = None
    previous: VersionRef | None = None
    pinned: bool = False
    #: Guard settings set by command (as `sidecar ctl guard --set` stores them).
    guard: dict[str, str] = field(default_factory=dict)
    #: The highest version number the fleet has handled: a replica's watcher never
    #: activates a version at or below it by itself (a new replica would otherwise
    #: undo a rollback by activating the newest version on its disk).
    watermark: int = 0
    origin: Origin = field(default_factory=Origin)

    def same_state(self, other: FleetModel) -> bool:
        """Equal but for who changed it."""
        return (self.active, self.previous, self.pinned, self.guard, self.watermark) == (
            other.active, other.previous, other.pinned, other.guard, other.watermark)

    def to_json(self) -> bytes:
        return json.dumps({
            "active": _ref_json(self.active), "previous": _ref_json(self.previous),
            "pinned": self.pinned, "guard": dict(sorted(self.guard.items())),
            "watermark": self.watermark,
            "origin": {"replica": self.origin.replica, "actor": self.origin.actor,
                       "action": self.origin.action, "reason": self.origin.reason,
                       "time": self.origin.time},
        }, sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes) -> FleetModel:
        """ValueError if it is not a fleet model record."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a fleet model record must be a JSON object")
        guard = data.get("guard", {})
        watermark = data.get("watermark", 0)
        if not isinstance(guard, dict) or not isinstance(watermark, int):
            raise ValueError("guard must be an object and watermark an integer")
        return FleetModel(_ref(data.get("active")), _ref(data.get("previous")),
                          bool(data.get("pinned", False)),
                          {str(k): str(v) for k, v in guard.items()}, max(0, watermark),
                          _origin(data.get("origin")))


@dataclass(frozen=True, slots=True)
class QuarantineMark:
    """Bytes no replica of the fleet serves, and why."""

    reason: str
    model: str = ""
    origin: Origin = field(default_factory=Origin)

    def to_json(self) -> bytes:
        return json.dumps({"reason": self.reason, "model": self.model,
                           "origin": {"replica": self.origin.replica,
                                      "actor": self.origin.actor,
                                      "action": self.origin.action,
                                      "time": self.origin.time}}, sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes) -> QuarantineMark:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a quarantine mark must be a JSON object")
        return QuarantineMark(str(data.get("reason", ""))[:1024],
                              str(data.get("model", ""))[:128], _origin(data.get("origin")))


@dataclass(frozen=True, slots=True)
class MemberModel:
    """What one replica serves of one model, as it reports it."""

    version: int = 0
    digest: str = ""
    ready: bool = False
    #: Why it does not serve what the fleet says ("" if it does).
    error: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    """A live replica (its key lives as long as its lease)."""

    replica: str
    address: str = ""
    control_address: str = ""
    started: float = 0.0
    models: dict[str, MemberModel] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({
            "replica": self.replica, "address": self.address,
            "control_address": self.control_address, "started": self.started,
            "models": {name: {"version": m.version, "digest": m.digest, "ready": m.ready,
                              "error": m.error} for name, m in sorted(self.models.items())},
        }, sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes) -> Member:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError("a member record must be a JSON object")
        models = {}
        for name, m in data.get("models", {}).items():
            if isinstance(m, dict):
                models[str(name)] = MemberModel(int(m.get("version", 0)),
                                                str(m.get("digest", "")),
                                                bool(m.get("ready", False)),
                                                str(m.get("error", ""))[:1024])
        return Member(str(data.get("replica", ""))[:128], str(data.get("address", ""))[:256],
                      str(data.get("control_address", ""))[:256],
                      float(data.get("started", 0.0)), models)
