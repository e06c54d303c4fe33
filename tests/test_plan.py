"""The watcher's decisions as a table: what is on disk x what serves -> actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.manager.plan import Action, Memory, ModelFacts, Policy, plan
from sidecar.source.watcher import FileState, VersionSeen


def v(number: int, *, complete: bool = True, size: int = 100, file: bool = True
      ) -> VersionSeen:
    state = FileState(size, 1, number) if file else None
    return VersionSeen(number, Path(f"/r/m/{number}/model.onnx"), state, complete)


def disk(*versions: VersionSeen) -> dict[int, VersionSeen]:
    return {x.number: x for x in versions}


SERVING_2 = ModelFacts(known=True, active=2, loaded=frozenset({1, 2}), watermark=2)

CASES = [
    ("new highest version is activated",
     disk(v(1), v(2), v(3)), SERVING_2, Policy.ACTIVATE, [("activate", 3)]),
    ("policy load loads it warm",
     disk(v(1), v(2), v(3)), SERVING_2, Policy.LOAD, [("load", 3)]),
    ("policy ignore notes it",
     disk(v(1), v(2), v(3)), SERVING_2, Policy.IGNORE, [("note", 3)]),
    ("newest still being written: wait, do not take an older one",
     disk(v(1), v(2), v(3), v(4, complete=False)), SERVING_2, Policy.ACTIVATE, [("wait", 0)]),
    ("burst: only the newest complete version",
     disk(*(v(n) for n in range(1, 11))), SERVING_2, Policy.ACTIVATE, [("activate", 10)]),
    ("folder without a model file yet is not a candidate",
     disk(v(1), v(2), v(3, file=False)), SERVING_2, Policy.ACTIVATE, []),
    ("nothing above the watermark: nothing to do",
     disk(v(1), v(2)), SERVING_2, Policy.ACTIVATE, []),
    ("a version the operator rolled back from is not re-activated",
     disk(v(1), v(2), v(3)), ModelFacts(True, 2, frozenset({2, 3}), watermark=3),
     Policy.ACTIVATE, []),
    ("a version at or below the watermark, above the active one and not loaded: noted",
     disk(v(1), v(2), v(3)), ModelFacts(True, 2, frozenset({1, 2}), watermark=3),
     Policy.ACTIVATE, [("note", 3)]),
    ("pinned: the new version is only noted",
     disk(v(1), v(2), v(3)), ModelFacts(True, 2, frozenset({1, 2}), pinned=True, watermark=2),
     Policy.ACTIVATE, [("note", 3)]),
    ("active version's folder removed: keeps serving, noted",
     disk(v(1)), SERVING_2, Policy.ACTIVATE, [("note", 2)]),
    ("warm version's folder removed: unloaded",
     disk(v(2)), SERVING_2, Policy.ACTIVATE, [("unload-version", 1)]),
    ("model folder removed: unloaded",
     None, SERVING_2, Policy.ACTIVATE, [("unload-model", 0)]),
    ("model folder removed while pinned: keeps serving, noted",
     None, ModelFacts(True, 2, frozenset({2}), pinned=True), Policy.ACTIVATE, [("note", 0)]),
    ("new model folder: served whatever its policy",
     disk(v(1), v(2)), ModelFacts(), Policy.IGNORE, [("activate", 2)]),
    ("unloaded by a command: left alone",
     disk(v(1), v(2), v(3)), ModelFacts(True, 0, frozenset(), unloaded=True, watermark=2),
     Policy.ACTIVATE, []),
]


@pytest.mark.parametrize(("disk_", "facts", "policy", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(disk_: dict[int, VersionSeen] | None, facts: ModelFacts, policy: Policy,
              expected: list[tuple[str, int]]) -> None:
    """Each row: the actions planned for that disk and serving state."""
    actions = plan("m", disk_, facts, policy, Memory())
    assert [(a.kind, a.version) for a in actions] == expected


def test_failed_bytes_are_skipped_until_they_change() -> None:
    """A version whose exact bytes failed is passed over for the next highest;
    once its file changes, it is a candidate again."""
    memory = Memory()
    on_disk = disk(v(1), v(2), v(3), v(4))
    memory.failed[("m", 4)] = on_disk[4].state  # type: ignore[assignment]
    assert plan("m", on_disk, SERVING_2, Policy.ACTIVATE, memory) == [
        Action("activate", 3, "new version", on_disk[3].state)]
    changed = disk(v(1), v(2), v(3), v(4, size=200))
    assert [(a.kind, a.version) for a in plan("m", changed, SERVING_2, Policy.ACTIVATE,
                                              memory)] == [("activate", 4)]
