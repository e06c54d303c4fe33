"""Rebuilding the serving state from the event log, when state.json is lost.

The event log holds every change that state.json summarises, so a state file
that is damaged (and set aside) need not mean forgetting what an operator or
the guard decided: the quarantine, pins, guard settings set by command, which
version was active and previous, and which models were unloaded by command are
replayed from the history. A pure function of the events, tested as a table.
What the log cannot say (an event lost with a rotated-away file) falls back to
the rules of a start without state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.state.events import Event
from sidecar.state.store import SavedModel, SavedState, VersionRef


@dataclass(slots=True)
class _Model:
    active: VersionRef | None = None
    previous: VersionRef | None = None
    pinned: bool = False
    watermark: int = 0
    guard: dict[str, str] = field(default_factory=dict)
    unloaded: bool = False


def _ref(number: int, digest: str) -> VersionRef | None:
    return VersionRef(number, digest) if number and digest else None


def rebuild(events: Iterable[Event], repository: str) -> SavedState:
    """The state the events describe (oldest first)."""
    models: dict[str, _Model] = {}
    quarantine: dict[str, str] = {}
    for e in events:
        m = models.setdefault(e.model, _Model()) if e.model else None
        action = e.action
        if action in ("quarantine", "crash-loop"):
            digest = e.to_digest if action == "quarantine" else e.from_digest
            if digest:
                quarantine[digest] = e.reason or f"quarantined by {e.actor}"
        elif action == "unquarantine":
            quarantine.pop(e.to_digest, None)
        if m is None:
            continue
        if action in ("activate", "rollback", "restore") and _ref(e.to_version, e.to_digest):
            before = m.active
            m.active = _ref(e.to_version, e.to_digest)
            if action != "restore":
                m.previous = _ref(e.from_version, e.from_digest) or before
            m.unloaded = False
            m.watermark = max(m.watermark, e.to_version)
        elif action == "replace" and _ref(e.to_version, e.to_digest):
            # new bytes of the same number, in whatever role it had
            if m.active is not None and m.active.number == e.to_version:
                m.active = _ref(e.to_version, e.to_digest)
            elif m.previous is not None and m.previous.number == e.to_version:
                m.previous = _ref(e.to_version, e.to_digest)
        elif action == "restore" and "stays unloaded" in e.reason:
            m.active, m.previous, m.unloaded = None, None, True
        elif action == "unload" and not e.from_version:
            m.active, m.previous, m.unloaded = None, None, True
        elif action == "load":
            m.watermark = max(m.watermark, e.to_version)
        elif action in ("pin", "unpin"):
            m.pinned = action == "pin"
        elif action == "guard-settings" and e.actor != "watcher":
            m.guard = dict(e.details)
    saved = {name: SavedModel(m.active, m.previous, m.pinned, m.watermark, m.guard, m.unloaded)
             for name, m in models.items()}
    return SavedState(saved, quarantine, repository)
