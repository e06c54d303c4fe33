"""The event log's files: rotation, paging across files, tolerant open, seq numbers.

Real files in tmp_path; nothing is mocked. `recent` (events kept in memory) is
set small so that paging has to read the rotated files. Only sidecar.state is
imported: the sidecar's protobuf modules and tritonclient's cannot share a process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.state.events import LOST_SEQ_GAP, PAGE_BYTES, Event, EventLog, encode

# About one line's size (seq and time digits vary it by a few bytes): a limit of
# n.5 lines holds exactly n lines.
LINE = len(encode(Event(10, time.time(), "tiny", "activate", "cli", "r")))


def lines(n: float) -> int:
    return int(n * LINE)


def add(log: EventLog, n: int, *, model: str = "tiny", reason: str = "r") -> list[Event]:
    """Append and publish `n` events, as the journal does."""
    made = []
    for _ in range(n):
        event = log.make(model, "activate", "cli", reason)
        log.write(event)
        log.publish(event)
        made.append(event)
    return made


def opened(directory: Path, **options: int) -> EventLog:
    log = EventLog(directory, **options)
    log.open()
    return log


def rotated_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("events.jsonl."))


def seqs_in(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def all_pages(log: EventLog, *, limit: int = 7, model: str = "") -> list[int]:
    seen: list[int] = []
    while page := log.page(after=seen[-1] if seen else 0, limit=limit, model=model):
        seen += [e.seq for e in page]
    return seen


def test_rotation_happens_at_the_size_limit_and_keeps_n_files(tmp_path: Path) -> None:
    """The current file never grows past the limit; it rotates to .1, .2, ... just
    before a line would not fit, and exactly `keep` rotated files stay."""
    log = opened(tmp_path, max_bytes=lines(5.5), keep=3)
    current = tmp_path / "events.jsonl"
    for _ in range(40):
        add(log, 1)
        assert 0 < current.stat().st_size <= lines(5.5)
    log.close()
    assert rotated_names(tmp_path) == ["events.jsonl.1", "events.jsonl.2", "events.jsonl.3"]
    files = [tmp_path / f"events.jsonl.{n}" for n in (3, 2, 1)] + [current]
    assert [seqs_in(f) for f in files] == [list(range(k, k + 5)) for k in (21, 26, 31, 36)]


def test_paging_across_rotated_files_returns_every_event_in_order(tmp_path: Path) -> None:
    """Pages that start before the events held in memory read the rotated files and
    return every kept event once, in order, with no gap, for the log and per model."""
    log = opened(tmp_path, max_bytes=lines(8.5), keep=20, recent=10)
    for i in range(60):
        add(log, 1, model="tiny" if i % 3 else "text")
    assert rotated_names(tmp_path)  # the history really is spread over files
    assert all_pages(log) == list(range(1, 61))
    assert all_pages(log, model="text") == list(range(1, 61, 3))
    page = asyncio.run(log.page_async(after=4, limit=5))
    assert [e.seq for e in page] == [5, 6, 7, 8, 9]
    log.close()
    again = opened(tmp_path, max_bytes=lines(8.5), keep=20, recent=10)
    assert all_pages(again, limit=13) == list(range(1, 61))
    again.close()


def test_paging_while_another_thread_rotates_never_skips(tmp_path: Path) -> None:
    """Pages read from the files while the I/O thread appends and rotates still
    return every event once, in order (a rotation never falls between two opens)."""
    log = opened(tmp_path, max_bytes=lines(3.5), keep=1000)
    add(log, 60)
    log.close()
    log = opened(tmp_path, max_bytes=lines(3.5), keep=1000, recent=1)  # 1..59: files only
    done = threading.Event()

    def io_thread() -> None:
        for _ in range(90):
            log.write(log.make("tiny", "activate", "cli"))
        done.set()

    writer = threading.Thread(target=io_thread)
    writer.start()
    rounds = 0
    while not done.is_set() or rounds == 0:
        assert [e.seq for e in log.page(limit=1000)] == list(range(1, 61))
        rounds += 1
    writer.join()
    assert len(rotated_names(tmp_path)) > 40
    log.close()


def test_a_page_stops_by_size(tmp_path: Path) -> None:
    """A page stops before its events' JSON passes PAGE_BYTES, from the files and from
    memory; the next page continues where it stopped; a larger event comes alone."""
    log = opened(tmp_path, max_bytes=4 * PAGE_BYTES, keep=4, recent=10)
    add(log, 30, reason="x" * (PAGE_BYTES // 10))
    huge = add(log, 1, reason="y" * (PAGE_BYTES + 10))[0]
    add(log, 5)
    page = log.page(after=0, limit=1000)  # seq 1 is only in the files
    assert [e.seq for e in page] == list(range(1, PAGE_BYTES // len(encode(page[0])) + 1))
    assert sum(len(encode(e)) for e in page) <= PAGE_BYTES
    assert [e.seq for e in log.page(after=26, limit=1000)] == [27, 28, 29, 30]  # memory
    assert [e.seq for e in log.page(after=30, limit=1000)] == [huge.seq]
    assert all_pages(log, limit=1000) == list(range(1, 37))
    log.close()
    again = opened(tmp_path, recent=1)  # now everything before seq 36 is read from files
    assert [e.seq for e in again.page(after=30, limit=1000)] == [huge.seq]
    assert all_pages(again, limit=1000) == list(range(1, 37))
    again.close()


def test_reopen_continues_seq_from_every_file(tmp_path: Path) -> None:
    """After a rotation the next seq continues above the highest seq of any file,
    even when the current file is empty or holds only lower numbers."""
    log = opened(tmp_path, max_bytes=lines(3.5), keep=2)
    add(log, 10)
    log.close()
    assert seqs_in(tmp_path / "events.jsonl") == [10]
    again = opened(tmp_path)
    assert add(again, 1)[0].seq == 11
    again.close()
    (tmp_path / "events.jsonl").write_text("")  # the newest events are in .1 only
    third = opened(tmp_path)
    assert third.last_seq == max(seqs_in(tmp_path / "events.jsonl.1")) == 9
    assert add(third, 1)[0].seq == 10
    third.close()
    (tmp_path / "events.jsonl").write_bytes(encode(Event(2, 1.0, "tiny", "pin", "cli")))
    fourth = opened(tmp_path)
    assert fourth.make("tiny", "pin", "cli").seq == 10
    fourth.close()


def crash_mid_rotation(directory: Path, steps: int) -> None:
    """Do the first `steps` renames of a rotation (nothing is deleted: keep is
    large), after creating its new file, then stop as a crash would."""
    (directory / ".events.jsonl.next").write_bytes(b"")
    numbers = sorted((int(n.rsplit(".", 1)[1]) for n in rotated_names(directory)),
                     reverse=True)
    renames = [(f"events.jsonl.{n}", f"events.jsonl.{n + 1}") for n in numbers]
    renames += [("events.jsonl", "events.jsonl.1")]
    for old, new in renames[:steps]:
        os.rename(directory / old, directory / new)


def test_a_crash_mid_rotation_loses_nothing_and_the_log_opens(tmp_path: Path) -> None:
    """Whichever rename of a rotation a crash stops before, the log opens with every
    event, removes or installs the spare new file, and keeps appending and rotating."""
    for steps in range(5):  # 3 rotated files: 3 shifts, then the current file
        directory = tmp_path / str(steps)
        directory.mkdir()
        log = opened(directory, max_bytes=lines(3.5), keep=10)
        add(log, 10)
        log.close()
        assert len(rotated_names(directory)) == 3
        crash_mid_rotation(directory, steps)
        again = opened(directory, max_bytes=lines(3.5), keep=10)
        assert (directory / "events.jsonl").exists()
        assert not (directory / ".events.jsonl.next").exists()
        assert all_pages(again) == list(range(1, 11))
        add(again, 5)
        assert all_pages(again) == list(range(1, 16))
        again.close()


def test_a_failed_rotation_keeps_appending(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """If a rotation fails the event is still appended to the current file and the
    failure logged once; rotation works again, a limit later, once the cause is gone."""
    log = opened(tmp_path, max_bytes=lines(3.5), keep=2)
    blocker = tmp_path / ".events.jsonl.next"
    blocker.mkdir()  # the new file cannot be created
    with caplog.at_level(logging.ERROR, logger="sidecar.events"):
        add(log, 5)
    assert [r.message for r in caplog.records] == ["event log rotation failed"]
    assert seqs_in(tmp_path / "events.jsonl") == [1, 2, 3, 4, 5]
    blocker.rmdir()
    add(log, 4)
    assert rotated_names(tmp_path) == ["events.jsonl.1"]
    assert seqs_in(tmp_path / "events.jsonl.1") == [1, 2, 3, 4, 5, 6]
    assert all_pages(log) == list(range(1, 10))
    log.close()


def test_damaged_lines_are_skipped_and_the_log_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Blank, non-JSON and ill-typed lines are skipped with one warning per file
    giving the count; unknown fields are dropped; a torn last line is cut."""
    good = [encode(Event(n, 1.0, "tiny", "activate", "cli")) for n in (1, 2, 4)]
    newer = json.dumps({"seq": 3, "time": 2, "model": "tiny", "action": "pin",
                        "actor": "cli", "colour": "blue"}).encode() + b"\n"
    damaged = [b"\n", b"   \n", b"not json\n", b"\xff\xfe\n", b"[1, 2]\n", b"[" * 5000 + b"\n",
               b'{"seq": "5", "time": 1, "model": "m", "action": "a", "actor": "c"}\n',
               b'{"seq": 6, "time": 1, "model": "m", "action": "a"}\n',
               b'{"seq": 7, "time": 1, "model": "m", "action": "a", "actor": "c",'
               b' "details": {"k": 1}}\n',
               b'{"seq": true, "time": 1, "model": "m", "action": "a", "actor": "c"}\n']
    (tmp_path / "events.jsonl.1").write_bytes(good[0] + damaged[0] + good[1] + damaged[2])
    (tmp_path / "events.jsonl").write_bytes(
        newer + b"".join(damaged[1:]) + good[2] + b'{"seq": 8, "ti')
    with caplog.at_level(logging.WARNING, logger="sidecar.events"):
        log = opened(tmp_path)
    warnings = [(r.message, getattr(r, "lines", None), Path(getattr(r, "file", "")).name)
                for r in caplog.records]
    assert sorted(warnings) == [("cut a torn event line", None, ""),
                                ("skipped damaged event lines", 2, "events.jsonl.1"),
                                ("skipped damaged event lines", 9, "events.jsonl")]
    events = log.page(limit=100)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[2] == Event(3, 2.0, "tiny", "pin", "cli")  # "colour" dropped
    assert add(log, 1)[0].seq == 5
    log.close()


def test_seq_floor_is_honoured(tmp_path: Path) -> None:
    """open(seq_floor) above what the log holds (it lost events) skips LOST_SEQ_GAP
    numbers past the floor, which events that saved no state may have used; a floor
    below what the log holds changes nothing."""
    log = opened(tmp_path)
    add(log, 10)
    log.close()
    high = EventLog(tmp_path)
    high.open(seq_floor=50)
    assert add(high, 1)[0].seq == 50 + LOST_SEQ_GAP + 1
    high.close()
    low = EventLog(tmp_path)
    low.open(seq_floor=3)
    assert add(low, 1)[0].seq == 50 + LOST_SEQ_GAP + 2
    low.close()
    memory = EventLog(None)
    memory.open(seq_floor=7)
    assert memory.make("tiny", "pin", "cli").seq == 7 + LOST_SEQ_GAP + 1


def test_bad_rotation_settings_stop_the_start(tmp_path: Path) -> None:
    """A rotation size that is not a positive number (flag or SIDECAR_EVENTS_MAX_MB)
    or a keep below 1 is a configuration error: one line, exit code 2."""
    cases = [(["--events-max-mb", "0"], {}, "events-max-mb must be a positive number"),
             ([], {"SIDECAR_EVENTS_MAX_MB": "nan"}, "events-max-mb must be a positive number"),
             (["--events-keep", "0"], {}, "events-keep must be at least 1")]
    for flags, env, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "serve", "--model-repository", str(tmp_path),
             "--listen", "127.0.0.1:0", *flags],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env},
            cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"sidecar: error: {message}"]
