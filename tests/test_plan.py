"""The watcher's decisions as a table: what is on disk x what serves -> actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.manager.plan import Action, Declaration, Memory, ModelFacts, Policy, plan
from sidecar.source.policy import read_declaration
from sidecar.source.watcher import FileState, Settler, VersionSeen


def v(number: int, *, complete: bool = True, size: int = 100, file: bool = True,
      vanishing: bool = False) -> VersionSeen:
    state = FileState(size, 1, number) if file else None
    return VersionSeen(number, Path(f"/r/m/{number}/model.onnx"), state, complete, vanishing)


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
    ("active version's folder removed: rolled back to the warm one, then unloaded",
     disk(v(1)), SERVING_2, Policy.ACTIVATE, [("activate", 1), ("unload-version", 2)]),
    ("active version's file removed (folder stays): rolled back",
     disk(v(1), v(2, file=False)), SERVING_2, Policy.ACTIVATE,
     [("activate", 1), ("unload-version", 2)]),
    ("active version vanishing for less than the settle time: nothing yet",
     disk(v(1), v(2, vanishing=True)), SERVING_2, Policy.ACTIVATE, []),
    ("active removed: the warm previous first, even below a higher loaded one",
     disk(v(1), v(4), v(5)),
     ModelFacts(True, 3, frozenset({1, 3, 4}), watermark=5, previous=1), Policy.ACTIVATE,
     [("activate", 1), ("unload-version", 3)]),
    ("active removed, previous gone too: another loaded version",
     disk(v(1), v(4)), ModelFacts(True, 3, frozenset({2, 3, 4}), watermark=4, previous=2),
     Policy.ACTIVATE, [("unload-version", 2), ("activate", 4), ("unload-version", 3)]),
    ("active removed, nothing warm: the highest complete version on disk",
     disk(v(1), v(2)), ModelFacts(True, 3, frozenset({3}), watermark=3), Policy.ACTIVATE,
     [("activate", 2), ("unload-version", 3)]),
    ("active removed, nothing else on disk: keeps serving from memory, noted",
     disk(), ModelFacts(True, 3, frozenset({3}), watermark=3), Policy.ACTIVATE,
     [("note", 3)]),
    ("active removed while pinned: keeps serving, noted",
     disk(v(1)), ModelFacts(True, 2, frozenset({1, 2}), pinned=True, watermark=2,
                            previous=1), Policy.ACTIVATE, [("note", 2)]),
    ("active file rewritten, complete: replaced (policy activate)",
     disk(v(1), v(2)), ModelFacts(True, 2, frozenset({1, 2}), watermark=2,
                                  rewritten=frozenset({2})), Policy.ACTIVATE,
     [("replace", 2)]),
    ("active file rewritten, still being written: wait for it",
     disk(v(1), v(2, complete=False)),
     ModelFacts(True, 2, frozenset({1, 2}), watermark=2, rewritten=frozenset({2})),
     Policy.ACTIVATE, [("wait", 0)]),
    ("active file rewritten, policy ignore: noted, the loaded bytes serve",
     disk(v(1), v(2)), ModelFacts(True, 2, frozenset({1, 2}), watermark=2,
                                  rewritten=frozenset({2})), Policy.IGNORE, [("note", 2)]),
    ("warm file rewritten: replaced whatever the policy",
     disk(v(1), v(2)), ModelFacts(True, 2, frozenset({1, 2}), watermark=2,
                                  rewritten=frozenset({1})), Policy.IGNORE,
     [("replace", 1)]),
    ("rewritten while pinned: noted",
     disk(v(1), v(2)), ModelFacts(True, 2, frozenset({1, 2}), pinned=True, watermark=2,
                                  rewritten=frozenset({2})), Policy.ACTIVATE,
     [("note", 2)]),
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


SERVING_3 = ModelFacts(known=True, active=3, loaded=frozenset({2, 3}), watermark=3, previous=2)


def serve(text: str, number: int = 0, problem: str = "") -> Declaration:
    return Declaration(text, number or (int(text) if text.isdigit() else 0), problem,
                       by_digest=not text.isdigit())


DECLARED = [
    ("declared older version: activated, recorded",
     disk(v(1), v(2), v(3)), SERVING_3, serve("1"), [("activate", 1, "1")]),
    ("declared by digest: the version holding it",
     disk(v(1), v(2), v(3)), SERVING_3, serve("ab" * 8, 1), [("activate", 1, "ab" * 8)]),
    ("declared the active version: only recorded",
     disk(v(1), v(2), v(3)), SERVING_3, serve("3"), [("declare", 3, "3")]),
    ("declaration applied before and the active moved since (a command, the guard):"
     " left alone",
     disk(v(1), v(2), v(3)), ModelFacts(True, 3, frozenset({2, 3}), watermark=3, previous=2,
                                        declared="1"), serve("1"), []),
    ("a new declaration after an applied one: applied",
     disk(v(1), v(2), v(3)), ModelFacts(True, 1, frozenset({1, 3}), watermark=3, previous=3,
                                        declared="1"), serve("2"), [("activate", 2, "2")]),
    ("declaration removed: the newest version serves again, above the watermark or not",
     disk(v(1), v(2), v(3)), ModelFacts(True, 1, frozenset({1, 3}), watermark=3, previous=3,
                                        declared="1"), serve(""), [("activate", 3, "")]),
    ("declaration removed while the newest serves: only recorded",
     disk(v(1), v(2), v(3)), ModelFacts(True, 3, frozenset({2, 3}), watermark=3,
                                        declared="3"), serve(""), [("declare", 3, "")]),
    ("declared version not on disk yet: noted, nothing else moves",
     disk(v(1), v(2), v(3)), SERVING_3, serve("4"), [("note", 0, None)]),
    ("declared version still being written: wait",
     disk(v(1), v(2), v(3), v(4, complete=False)), SERVING_3, serve("4"),
     [("wait", 0, None)]),
    ("a new version while a declaration holds: noted, not activated",
     disk(v(1), v(2), v(3), v(4)), ModelFacts(True, 1, frozenset({1, 3}), watermark=3,
                                              previous=3, declared="1"), serve("1"),
     [("note", 4, None)]),
    ("pinned: a declaration waits for the unpin",
     disk(v(1), v(2), v(3)), ModelFacts(True, 3, frozenset({2, 3}), pinned=True,
                                        watermark=3), serve("1"), [("note", 0, None)]),
    ("declaration whose digest matches nothing: noted",
     disk(v(1), v(2), v(3)), SERVING_3, serve("cd" * 8, problem="no such digest"),
     [("note", 0, None)]),
    ("new model with a declaration: the declared version, not the newest",
     disk(v(1), v(2), v(3)), ModelFacts(), serve("2"), [("activate", 2, "2")]),
    ("declared active rewritten by number: the new bytes serve even with policy ignore",
     disk(v(1), v(2), v(3)), ModelFacts(True, 3, frozenset({2, 3}), watermark=3,
                                        declared="3", rewritten=frozenset({3})),
     serve("3"), [("replace", 3, None)]),
    ("declared by digest, active rewritten: the declared bytes keep serving",
     disk(v(1), v(2), v(3)), ModelFacts(True, 3, frozenset({2, 3}), watermark=3,
                                        declared="ab" * 8, rewritten=frozenset({3})),
     serve("ab" * 8, 3), [("note", 3, None)]),
    ("declaration applied, then its version removed: rolled back like any removal",
     disk(v(1), v(2)), ModelFacts(True, 3, frozenset({2, 3}), watermark=3, previous=2,
                                  declared="3"), serve("3", problem="not on disk"),
     [("note", 0, None), ("activate", 2, None), ("unload-version", 3, None)]),
]


@pytest.mark.parametrize(("disk_", "facts", "declared", "expected"),
                         [c[1:] for c in DECLARED], ids=[c[0] for c in DECLARED])
def test_plan_with_a_declaration(disk_: dict[int, VersionSeen], facts: ModelFacts,
                                 declared: Declaration,
                                 expected: list[tuple[str, int, str | None]]) -> None:
    """Each row: `serve` in sidecar.json (as resolved), what serves -> actions, and
    the declaration each records as applied once it succeeds."""
    actions = plan("m", disk_, facts, Policy.IGNORE, Memory(), declared)
    assert [(a.kind, a.version, a.declare) for a in actions] == expected


def test_a_retreat_lowers_the_watermark_to_the_highest_version_left() -> None:
    """After the active version is removed, the watermark comes down to what is left,
    so the version is new again if the removal is reverted."""
    actions = plan("m", disk(v(1), v(2)), SERVING_3, Policy.ACTIVATE, Memory())
    assert actions[0].kind == "activate" and actions[0].watermark == 2


def test_a_vanished_file_is_reported_for_the_settle_time_then_dropped() -> None:
    """The watcher's Settler: a complete file missing from a scan is reported as it
    was (vanishing) until it has been missing for the settle time; one that comes
    back (rewritten in place by git) is not missing."""
    settler = Settler(settle_s=0.5)
    path, state = Path("/r/m/2/model.onnx"), FileState(100, 1, 7)
    ms = 1_000_000
    assert settler.vanishing({path: ("m", 2, state)}, {path}, 0) == []
    assert settler.vanishing({}, set(), 100 * ms) == [("m", 2, path, state)]
    assert settler.vanishing({}, set(), 599 * ms) == [("m", 2, path, state)]
    assert settler.vanishing({}, set(), 600 * ms) == []  # gone for 0.5 s: removed
    assert settler.vanishing({}, set(), 700 * ms) == []
    # back (being rewritten: it exists, not complete yet): not vanishing
    assert settler.vanishing({path: ("m", 2, state)}, {path}, 800 * ms) == []
    assert settler.vanishing({}, {path}, 900 * ms) == []


@pytest.mark.parametrize(("content", "expected"), [
    ("", ("", False)),
    ('{"on_new_version": "load"}', ("", False)),
    ('{"serve": 3}', ("3", False)),
    ('{"serve": "3"}', ("3", False)),
    ('{"serve": "sha256:' + "AB" * 32 + '"}', ("ab" * 32, False)),
    ('{"serve": "abcdef012345"}', ("abcdef012345", False)),
    ('{"serve": 0}', ("", True)),
    ('{"serve": true}', ("", True)),
    ('{"serve": "latest"}', ("", True)),
    ('{"serve": "abc"}', ("", True)),
    ('{"serve": 3.5}', ("", True)),
    ('{"serve": [3]}', ("", True)),
], ids=["no file", "no key", "number", "number as text", "sha256: digest", "digest prefix",
        "zero", "boolean", "a word", "short hex", "fraction", "a list"])
def test_serve_declarations_are_read_strictly(tmp_path: Path, content: str,
                                              expected: tuple[str, bool]) -> None:
    """`serve` is a version number or a 12+ hex digest (prefix); anything else is
    reported (with the file's name) and ignored."""
    if content:
        (tmp_path / "sidecar.json").write_text(content)
    text, problem = read_declaration(tmp_path)
    assert (text, bool(problem)) == expected
    if problem:
        assert "sidecar.json: serve must be a version number" in problem
