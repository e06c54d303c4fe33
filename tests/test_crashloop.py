"""The crash-loop rule as a table (serving record x limit -> counts, verdicts), the
record's pure constructors, and the record file on disk, damaged in every way."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.manager.crashloop import CrashJudgement, judge
from sidecar.state.record import (
    MAX_TIMES,
    Crashes,
    RecordStore,
    Serving,
    ServingRecord,
)

D2, D3, DB = "22" * 32, "33" * 32, "bb" * 32
T1, T2, NOW = 1_000.0, 2_000.0, 3_000.0
WINDOW = 120.0


def unclean(models: dict[str, Serving], crashes: dict[str, Crashes] | None = None
            ) -> ServingRecord:
    return ServingRecord(False, models, crashes or {})


def crashed(version: int, digest: str) -> Serving:
    return Serving(version, digest, since=T2, survived=False)


def survived(version: int, digest: str) -> Serving:
    return Serving(version, digest, since=T1, survived=True)


CASES: list[tuple[str, ServingRecord, int, dict[str, Crashes], list[tuple[str, int, int]]]] = [
    ("a clean end never counts, and changes no count",
     ServingRecord(True, {"m": crashed(3, D3)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(1, (T1,))}, []),
    ("nothing recorded: nothing to judge",
     ServingRecord(), 2, {}, []),
    ("one unclean end within the window counts 1: no verdict at limit 2",
     unclean({"m": crashed(3, D3)}), 2, {D3: Crashes(1, (NOW,))}, []),
    ("two in a row: a verdict with count 2",
     unclean({"m": crashed(3, D3)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(2, (T1, NOW))}, [("m", 3, 2)]),
    ("limit 1: the first unclean end gives a verdict",
     unclean({"m": crashed(3, D3)}), 1, {D3: Crashes(1, (NOW,))}, [("m", 3, 1)]),
    ("a count already past the limit still gives a verdict",
     unclean({"m": crashed(3, D3)}, {D3: Crashes(4, (T1,))}), 2,
     {D3: Crashes(5, (T1, NOW))}, [("m", 3, 5)]),
    ("a version that survived the window resets its count",
     unclean({"m": survived(3, D3)}, {D3: Crashes(1, (T1,))}), 2, {}, []),
    ("limit 0 is off: counted, never a verdict",
     unclean({"m": crashed(3, D3)}, {D3: Crashes(1, (T1,))}), 0,
     {D3: Crashes(2, (T1, NOW))}, []),
    ("two models, only the one that did not survive counts",
     unclean({"a": crashed(3, D3), "b": survived(1, DB)},
             {D3: Crashes(1, (T1,)), DB: Crashes(1, (T1,))}), 2,
     {D3: Crashes(2, (T1, NOW))}, [("a", 3, 2)]),
    ("several models share nothing: each digest has its own count",
     unclean({"a": crashed(3, D3), "b": crashed(1, DB)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(2, (T1, NOW)), DB: Crashes(1, (NOW,))}, [("a", 3, 2)]),
    ("bytes serving nowhere at the end keep their count",
     unclean({"m": survived(2, D2)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(1, (T1,))}, []),
    ("the same bytes under two models count once, a verdict for each",
     unclean({"a": crashed(3, D3), "b": crashed(7, D3)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(2, (T1, NOW))}, [("a", 3, 2), ("b", 7, 2)]),
    ("the same bytes survived under one model, crashed under another: it counts",
     unclean({"a": crashed(3, D3), "b": survived(7, D3)}, {D3: Crashes(1, (T1,))}), 2,
     {D3: Crashes(2, (T1, NOW))}, [("a", 3, 2)]),
]


@pytest.mark.parametrize(("record", "limit", "counts", "verdicts"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge(record: ServingRecord, limit: int, counts: dict[str, Crashes],
               verdicts: list[tuple[str, int, int]]) -> None:
    """Each row: the counts to persist and the versions to roll back and quarantine."""
    judgement = judge(record, now=NOW, window_s=WINDOW, limit=limit)
    assert judgement.crashes == counts
    assert [(v.model, v.version, v.count) for v in judgement.verdicts] == verdicts
    for v in judgement.verdicts:
        assert v.digest == record.models[v.model].digest
        assert v.times == counts[v.digest].times and "crash" in v.reason


def test_the_reason_says_crash_the_count_the_window_and_the_times() -> None:
    """The quarantine reason names the count, the window, the version and each time in UTC."""
    t1 = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC).timestamp()
    t2 = datetime(2026, 11, 30, 1, 4, 5, tzinfo=UTC).timestamp()
    record = unclean({"m": crashed(3, D3)}, {D3: Crashes(1, (t1,))})
    (verdict,) = judge(record, now=t2, window_s=120, limit=2).verdicts
    assert verdict.reason == (
        "crash loop: the process ended without a clean stop 2 times in a row within 120 s"
        " of version 3 starting to serve (detected at 2026-11-30T01:02:03Z,"
        " 2026-11-30T01:04:05Z)")
    assert verdict.times == (t1, t2)


def test_only_the_last_times_are_kept() -> None:
    """Times are capped at the last MAX_TIMES; the count goes on, and the reason says so."""
    times = tuple(float(t) for t in range(MAX_TIMES))
    record = unclean({"m": crashed(3, D3)}, {D3: Crashes(MAX_TIMES, times)})
    judgement = judge(record, now=NOW, window_s=WINDOW, limit=2)
    assert judgement.crashes[D3] == Crashes(MAX_TIMES + 1, (*times[1:], NOW))
    assert "the last 10 detected at" in judgement.verdicts[0].reason


def test_judge_is_pure_and_its_record_serves_nothing() -> None:
    """The judged record is left alone; the record to save keeps the counts and no model."""
    record = unclean({"m": crashed(3, D3)}, {D3: Crashes(1, (T1,))})
    before = ServingRecord.from_json(record.to_json())
    judgement = judge(record, now=NOW, window_s=WINDOW, limit=2)
    assert record == before
    assert judgement.record == ServingRecord(False, {}, {D3: Crashes(2, (T1, NOW))})
    assert judge(judgement.record, now=NOW + 1, window_s=WINDOW, limit=2) == CrashJudgement(
        {D3: Crashes(2, (T1, NOW))})


def test_constructors_return_new_records() -> None:
    """serving / survived / not_serving / stopped_cleanly / without_crashes each
    return a new record and leave the old one as it was."""
    empty = ServingRecord()
    one = empty.serving("m", 3, D3, T2)
    assert empty == ServingRecord()
    assert one == ServingRecord(False, {"m": Serving(3, D3, T2, False)})
    counted = ServingRecord(False, one.models, {D3: Crashes(1, (T1,)), DB: Crashes(1, (T1,))})
    marked = counted.survived("m", D3)
    assert marked.models["m"].survived and marked.crashes == {DB: Crashes(1, (T1,))}
    assert not counted.models["m"].survived and D3 in counted.crashes
    assert counted.without_crashes(DB).crashes == {D3: Crashes(1, (T1,))}
    assert counted.not_serving("m").models == {} and counted.models
    stopped = counted.stopped_cleanly()
    assert stopped == ServingRecord(True, {}, counted.crashes)


def test_a_late_survived_mark_changes_nothing() -> None:
    """A timer that fires after the model moved to other bytes (or restarted serving
    the same bytes at another time) does not mark the new serving."""
    record = ServingRecord().serving("m", 3, D3, T1).serving("m", 2, D2, T2)
    assert record.survived("m", D3) is record
    assert record.survived("m", D2, since=T1) is record
    assert record.survived("m", D2, since=T2).models["m"].survived
    assert record.survived("other", D2) is record


# The record on disk.


def full_record() -> ServingRecord:
    return ServingRecord(False, {"a": Serving(3, D3, 1764464523.25, False),
                                 "b": Serving(1, DB, T1, True)},
                         {D3: Crashes(1, (T1,)), D2: Crashes(2, (T1, T2))})


def test_record_round_trips_through_the_file(tmp_path: Path) -> None:
    """What is saved is what is loaded; the temp file is renamed away."""
    store = RecordStore(tmp_path)
    store.save(full_record())
    assert store.load() == full_record()
    store.save(full_record().stopped_cleanly())
    assert store.load() == full_record().stopped_cleanly()
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_file_is_an_empty_clean_record(tmp_path: Path) -> None:
    """A first start (or no state directory yet) has nothing to judge."""
    assert RecordStore(tmp_path).load() == ServingRecord(clean=True)
    assert RecordStore(tmp_path / "missing").load() == ServingRecord()


def test_save_writes_fsyncs_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """The new bytes are fsynced before the rename, and the directory after it."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    RecordStore(tmp_path).save(full_record())
    assert calls == ["fsync", "replace", "fsync"]


def test_a_save_cut_before_the_rename_leaves_the_old_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the old file whole, and a torn temp file
    left behind is never read."""
    store = RecordStore(tmp_path)
    store.save(full_record())

    def crash(src: Any, dst: Any) -> None:
        raise OSError("killed before the rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="killed"):
            store.save(full_record().stopped_cleanly())
    (tmp_path / ".serving.json.tmp").write_text('{"format": 1, "cle')
    assert store.load() == full_record()
    store.save(full_record().stopped_cleanly())
    assert store.load() == full_record().stopped_cleanly()


def valid() -> dict[str, Any]:
    return full_record().to_json()


def edited(path: tuple[str, ...], value: Any) -> bytes:
    data = valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(data).encode()


DAMAGED = [
    ("garbage", b"\x00\xff not json at all"),
    ("empty file", b""),
    ("truncated", json.dumps(valid()).encode()[:40]),
    ("not an object", b"[1, 2, 3]"),
    ("null", b"null"),
    ("unknown format", edited(("format",), 2)),
    ("clean not a bool", edited(("clean",), "yes")),
    ("clean missing", json.dumps({"format": 1}).encode()),
    ("models not an object", edited(("models",), [])),
    ("a model not an object", edited(("models", "a"), 3)),
    ("version a string", edited(("models", "a", "version"), "3")),
    ("version a bool", edited(("models", "a", "version"), True)),
    ("version zero", edited(("models", "a", "version"), 0)),
    ("digest missing", edited(("models", "a", "digest"), None)),
    ("since a string", edited(("models", "a", "since"), "now")),
    ("since 1e400", json.dumps(valid()).replace("1764464523.25", "1e400").encode()),
    ("since NaN", json.dumps(valid()).replace("1764464523.25", "NaN").encode()),
    ("since a 5000-digit integer",
     json.dumps(valid()).replace("1764464523.25", "9" * 5000).encode()),
    ("since a 400-digit integer",
     json.dumps(valid()).replace("1764464523.25", "1" + "0" * 400).encode()),
    ("survived not a bool", edited(("models", "a", "survived"), 1)),
    ("crashes not an object", edited(("crashes",), "none")),
    ("count negative", edited(("crashes", D3, "count"), -1)),
    ("count a float", edited(("crashes", D3, "count"), 1.5)),
    ("times not a list", edited(("crashes", D3, "times"), 1000)),
    ("a time a string", edited(("crashes", D3, "times"), ["then"])),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000),
    ("bad utf-8", b'{"format": 1, "clean": "\xff"}'),
]


@pytest.mark.parametrize("data", [d[1] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_a_damaged_file_is_set_aside(tmp_path: Path, data: bytes,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """A damaged record loads as an empty clean one, with a warning, and is moved
    aside for inspection so the next save starts afresh."""
    store = RecordStore(tmp_path)
    store.path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="sidecar.state"):
        assert store.load() == ServingRecord()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert (tmp_path / "serving.json.corrupt").read_bytes() == data
    assert not store.path.exists()


def test_a_directory_in_its_place_is_set_aside(tmp_path: Path) -> None:
    """A directory named serving.json is moved aside, and saving works again."""
    store = RecordStore(tmp_path)
    store.path.mkdir()
    (store.path / "inside").write_text("x")
    assert store.load() == ServingRecord()
    assert (tmp_path / "serving.json.corrupt" / "inside").exists()
    store.save(full_record())
    assert store.load() == full_record()


def test_damage_that_cannot_be_set_aside_still_loads(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """When the damaged thing cannot be moved (a directory onto a full one), load
    still returns an empty clean record and says it was not set aside."""
    store = RecordStore(tmp_path)
    store.path.mkdir()
    (tmp_path / "serving.json.corrupt").mkdir()
    (tmp_path / "serving.json.corrupt" / "older").write_text("x")
    with caplog.at_level(logging.WARNING, logger="sidecar.state"):
        assert store.load() == ServingRecord()
    assert store.path.is_dir()
    assert getattr(caplog.records[0], "kept_as", "").startswith("not set aside")
