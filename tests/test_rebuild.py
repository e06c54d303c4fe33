"""Rebuilding the serving state from the event log: a table of event sequences."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import make_models
import pytest

from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.state.events import Event, EventLog
from sidecar.state.rebuild import rebuild
from sidecar.state.store import SavedModel, SavedState, StateStore, VersionRef

REPO = "/models"
D1, D2, D3 = "1" * 64, "2" * 64, "3" * 64
V1, V2, V3 = VersionRef(1, D1), VersionRef(2, D2), VersionRef(3, D3)
_REFS = {0: (0, ""), 1: (1, D1), 2: (2, D2), 3: (3, D3)}


def ev(action: str, model: str = "tiny", *, actor: str = "cli", reason: str = "",
       frm: int = 0, to: int = 0, details: dict[str, str] | None = None,
       from_digest: str | None = None, to_digest: str | None = None) -> dict[str, Any]:
    """One event's fields (seq and time are given by `events`); versions by number."""
    return {"model": model, "action": action, "actor": actor, "reason": reason,
            "from_version": _REFS[frm][0],
            "from_digest": _REFS[frm][1] if from_digest is None else from_digest,
            "to_version": _REFS[to][0],
            "to_digest": _REFS[to][1] if to_digest is None else to_digest,
            "details": details or {}}


def events(*fields: dict[str, Any]) -> list[Event]:
    """Events numbered from 1 in the order given, as the log holds them."""
    return [Event(seq=i, time=1_700_000_000.0 + i, **f) for i, f in enumerate(fields, 1)]


def state(models: dict[str, SavedModel] | None = None,
          quarantine: dict[str, str] | None = None) -> SavedState:
    return SavedState(models or {}, quarantine or {}, REPO)


RESTORED = ev("restore", actor="startup", to=2, details={"previous": "1"})

CASES: list[tuple[str, list[dict[str, Any]], SavedState]] = [
    ("no events", [], state()),
    ("a restore sets the active version only",
     [RESTORED],
     state({"tiny": SavedModel(active=V2, watermark=2)})),
    ("an activate sets active, and previous from its from-version",
     [RESTORED, ev("activate", frm=2, to=3)],
     state({"tiny": SavedModel(active=V3, previous=V2, watermark=3)})),
    ("an activate without a from-version keeps the active before as previous",
     [RESTORED, ev("activate", to=3)],
     state({"tiny": SavedModel(active=V3, previous=V2, watermark=3)})),
    ("a first activate has no previous",
     [ev("activate", to=1)],
     state({"tiny": SavedModel(active=V1, watermark=1)})),
    ("a rollback swaps active and previous",
     [RESTORED, ev("activate", frm=2, to=3), ev("rollback", frm=3, to=2)],
     state({"tiny": SavedModel(active=V2, previous=V3, watermark=3)})),
    ("a second rollback undoes the first",
     [ev("activate", frm=2, to=3), ev("rollback", frm=3, to=2), ev("rollback", frm=2, to=3)],
     state({"tiny": SavedModel(active=V3, previous=V2, watermark=3)})),
    ("a rollback by the guard counts like one by command",
     [ev("activate", frm=2, to=3), ev("rollback", actor="guard", frm=3, to=2)],
     state({"tiny": SavedModel(active=V2, previous=V3, watermark=3)})),
    ("the watermark never falls: activating an older version keeps the highest",
     [ev("activate", frm=2, to=3), ev("activate", frm=3, to=1)],
     state({"tiny": SavedModel(active=V1, previous=V3, watermark=3)})),
    ("an activate with no digest changes nothing",
     [RESTORED, ev("activate", frm=2, to=3, to_digest="")],
     state({"tiny": SavedModel(active=V2, watermark=2)})),
    ("a load raises the watermark, not the active version",
     [RESTORED, ev("load", to=3)],
     state({"tiny": SavedModel(active=V2, watermark=3)})),
    ("a quarantine by command quarantines its digest with the reason",
     [RESTORED, ev("quarantine", to=3, reason="bad answers")],
     state({"tiny": SavedModel(active=V2, watermark=2)}, {D3: "bad answers"})),
    ("a quarantine without a reason names its actor",
     [ev("quarantine", actor="guard", to=3)],
     state({"tiny": SavedModel()}, {D3: "quarantined by guard"})),
    ("an unquarantine (no model) releases the digest",
     [ev("quarantine", to=3, reason="x"), ev("quarantine", to=1, reason="y"),
      ev("unquarantine", model="", to_digest=D3)],
     state({"tiny": SavedModel()}, {D1: "y"})),
    ("a crash loop quarantines the version it rolled back from",
     [RESTORED, ev("crash-loop", actor="startup", frm=2, reason="crash loop: 2 times")],
     state({"tiny": SavedModel(active=V2, watermark=2)}, {D2: "crash loop: 2 times"})),
    ("an unquarantine ends a crash loop's quarantine too",
     [ev("crash-loop", actor="startup", frm=2, reason="crash loop"),
      ev("unquarantine", model="", to_digest=D2)],
     state({"tiny": SavedModel()})),
    ("the last quarantine of a digest gives its reason",
     [ev("quarantine", to=3, reason="first"), ev("quarantine", to=3, reason="second")],
     state({"tiny": SavedModel()}, {D3: "second"})),
    ("a pin pins",
     [RESTORED, ev("pin")],
     state({"tiny": SavedModel(active=V2, pinned=True, watermark=2)})),
    ("an unpin after a pin unpins",
     [RESTORED, ev("pin"), ev("unpin")],
     state({"tiny": SavedModel(active=V2, watermark=2)})),
    ("guard settings by command are kept",
     [ev("guard-settings", details={"max_error_ratio": "0.05", "probation_s": "60"})],
     state({"tiny": SavedModel(guard={"max_error_ratio": "0.05", "probation_s": "60"})})),
    ("the last guard settings by command replace the earlier ones",
     [ev("guard-settings", details={"max_error_ratio": "0.05"}),
      ev("guard-settings", actor="rpc", details={"probation_s": "60"})],
     state({"tiny": SavedModel(guard={"probation_s": "60"})})),
    ("guard settings reset by command are dropped",
     [ev("guard-settings", details={"max_error_ratio": "0.05"}), ev("guard-settings")],
     state({"tiny": SavedModel()})),
    ("guard settings from a model's file (actor watcher) are not commands'",
     [ev("guard-settings", details={"max_error_ratio": "0.05"}),
      ev("guard-settings", actor="watcher", details={"probation_s": "5"})],
     state({"tiny": SavedModel(guard={"max_error_ratio": "0.05"})})),
    ("an unload of the whole model leaves it unloaded, without versions",
     [RESTORED, ev("activate", frm=2, to=3), ev("unload")],
     state({"tiny": SavedModel(watermark=3, unloaded=True)})),
    ("an unload of one version changes nothing",
     [RESTORED, ev("activate", frm=2, to=3), ev("unload", frm=1)],
     state({"tiny": SavedModel(active=V3, previous=V2, watermark=3)})),
    ("an activate after an unload serves again",
     [RESTORED, ev("unload"), ev("activate", to=3)],
     state({"tiny": SavedModel(active=V3, watermark=3)})),
    ("a restore of a model unloaded by command keeps it unloaded",
     [RESTORED, ev("unload"),
      ev("restore", actor="startup", reason="the model was unloaded by a command before"
         " the restart; it stays unloaded")],
     state({"tiny": SavedModel(watermark=2, unloaded=True)})),
    ("a restore after an activate replaces the active version, keeps the previous",
     [ev("activate", frm=2, to=3), ev("restore", actor="startup", to=1)],
     state({"tiny": SavedModel(active=V1, previous=V2, watermark=3)})),
    ("a restore after an unload serves again",
     [ev("unload"), ev("restore", actor="startup", to=2)],
     state({"tiny": SavedModel(active=V2, watermark=2)})),
    ("events that change no state leave a model as it was",
     [RESTORED, ev("restore-mismatch", actor="startup", frm=3),
      ev("load-failed", actor="watcher", to=3), ev("watch-note", actor="watcher"),
      ev("guard-held", actor="guard"), ev("canary", to=3), ev("canary-abort", frm=3)],
     state({"tiny": SavedModel(active=V2, watermark=2)})),
    ("a replace gives the active version its new bytes",
     [RESTORED, ev("replace", actor="watcher", frm=2, to=2, to_digest="e" * 64)],
     state({"tiny": SavedModel(active=VersionRef(2, "e" * 64), watermark=2)})),
    ("a replace of the previous version's bytes",
     [RESTORED, ev("activate", frm=2, to=3),
      ev("replace", actor="watcher", frm=2, to=2, to_digest="e" * 64)],
     state({"tiny": SavedModel(active=V3, previous=VersionRef(2, "e" * 64), watermark=3)})),
    ("models are rebuilt each from its own events",
     [RESTORED, ev("restore", "text", actor="startup", to=1), ev("pin", "text"),
      ev("activate", frm=2, to=3), ev("unload", "other"), ev("quarantine", "text", to=1,
                                                            reason="bad")],
     state({"tiny": SavedModel(active=V3, previous=V2, watermark=3),
            "text": SavedModel(active=V1, pinned=True, watermark=1),
            "other": SavedModel(unloaded=True)}, {D1: "bad"})),
]


@pytest.mark.parametrize(("sequence", "expected"), [(seq, want) for _, seq, want in CASES],
                         ids=[name for name, _, _ in CASES])
def test_rebuild(sequence: list[dict[str, Any]], expected: SavedState) -> None:
    """The state rebuilt from a sequence of events is the one the table gives."""
    assert rebuild(events(*sequence), REPO) == expected


def test_rebuild_accepts_any_iterable_once() -> None:
    """The events may come as a one-pass iterator (read from the files as they come)."""
    log = events(RESTORED, ev("activate", frm=2, to=3), ev("pin"))
    assert rebuild(iter(log), REPO) == rebuild(log, REPO)


def test_rebuilt_state_round_trips_through_the_file_format() -> None:
    """What rebuild gives can be saved and read back as it is (no last_seq of its own)."""
    rebuilt = rebuild(events(RESTORED, ev("activate", frm=2, to=3), ev("pin"),
                             ev("guard-settings", details={"probation_s": "60"}),
                             ev("quarantine", to=1, reason="r"), ev("unload", "text")), REPO)
    assert rebuilt.last_seq == 0
    assert SavedState.from_json(rebuilt.to_json()) == rebuilt


def _fields(saved: SavedState) -> dict[str, Any]:
    """What rebuild promises to recover: per model active, previous, pin, guard
    settings by command, unloaded; and the quarantine."""
    return {"models": {name: (m.active, m.previous, m.pinned, m.guard, m.unloaded)
                       for name, m in saved.models.items()},
            "quarantine": saved.quarantine}


def test_rebuild_agrees_with_the_state_real_commands_saved(tmp_path: Path) -> None:
    """After real commands (activate, rollback, quarantine, pin, guard settings, an
    unload), the state rebuilt from the event log is the one state.json holds."""
    repo = tmp_path / "repo"
    for v in (1, 2, 3):
        make_models.write_model(make_models.tiny_model(v), repo, "tiny", v)
    make_models.write_model(make_models.tiny_model(1), repo, "other", 1)
    state_dir = tmp_path / "state"

    async def scenario() -> None:
        store, log = StateStore(state_dir), EventLog(state_dir)
        store.open()
        log.open()
        m = ModelManager(repo, SessionConfig(), store=store, events=log)
        await m.start()
        try:
            await m.activate("tiny", "1", actor="cli")
            await m.activate("tiny", "3", actor="cli")
            await m.quarantine_version("tiny", "3", actor="cli", reason="wrong answers")
            await m.rollback("tiny", actor="cli", reason="back")
            await m.set_pinned("tiny", True, actor="cli")
            await m.set_guard("tiny", {"probation_s": "60"}, actor="cli")
            await m.unload("other", actor="cli")
        finally:
            await m.close()

    asyncio.run(scenario())
    saved = StateStore(state_dir).load()
    again = EventLog(state_dir)
    again.open()
    try:
        rebuilt = rebuild(again.history(), str(repo.absolute()))
    finally:
        again.close()
    assert _fields(rebuilt) == _fields(saved)
    assert _fields(rebuilt)["models"]["tiny"][:2] == (
        VersionRef(1, saved.models["tiny"].active.digest),  # type: ignore[union-attr]
        VersionRef(3, saved.models["tiny"].previous.digest))  # type: ignore[union-attr]
