"""The persisted serving state and the event log, in process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sidecar.state.events import EventLog
from sidecar.state.store import SavedModel, SavedState, StateStore, VersionRef


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    """What is saved is what is loaded: refs by number and digest, pins, quarantine."""
    store = StateStore(tmp_path)
    store.open()
    state = SavedState({"tiny": SavedModel(VersionRef(2, "ab" * 32), VersionRef(1, "cd" * 32),
                                           pinned=True)}, {"ef" * 32: "guard: errors"})
    store.save(state)
    assert store.load() == state
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_no_file_is_an_empty_state(tmp_path: Path) -> None:
    """A first start has no state file: an empty state, no error."""
    assert StateStore(tmp_path).load() == SavedState()


def test_unreadable_file_is_kept_aside(tmp_path: Path) -> None:
    """A state file that does not parse is moved aside (for inspection), not trusted."""
    store = StateStore(tmp_path)
    store.path.write_text('{"format": 1, "models": {')
    assert store.load() == SavedState()
    assert list(tmp_path.glob("state.json.corrupt-*")) and not store.path.exists()


def test_events_are_appended_numbered_and_paged(tmp_path: Path) -> None:
    """Events get increasing seq numbers, are fsynced as JSON lines and read back in
    pages, filtered by model; a reopened log continues the numbering."""
    log = EventLog(tmp_path)
    log.open()
    for i in range(5):
        event = log.make("tiny" if i % 2 else "text", "activate", "cli", f"r{i}", to_version=i)
        log.write(event)
        log.publish(event)
    log.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    again = EventLog(tmp_path)
    again.open()
    assert again.last_seq == 5
    assert [e.seq for e in again.page(after=1, limit=2)] == [2, 3]
    assert [e.seq for e in again.page(model="tiny")] == [2, 4]
    assert again.make("tiny", "rollback", "cli").seq == 6
    again.close()


def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    """A line half-written by a crash is cut off; the complete ones stay."""
    path = tmp_path / "events.jsonl"
    log = EventLog(tmp_path)
    log.open()
    log.write(log.make("tiny", "activate", "cli"))
    log.close()
    with path.open("ab") as f:
        f.write(b'{"seq": 2, "tim')
    again = EventLog(tmp_path)
    again.open()
    assert again.last_seq == 1
    again.close()
    assert path.read_bytes().endswith(b"}\n")


def test_a_follower_that_falls_behind_is_dropped() -> None:
    """A follower that does not read is dropped after its backlog, and told so."""

    async def scenario() -> None:
        log = EventLog(None)
        sub = log.subscribe()
        for _ in range(1001):
            log.publish(log.make("tiny", "activate", "cli"))
        assert sub.overflowed
        items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert items[-1] is None  # the end-of-stream marker the reader sees
        log.publish(log.make("tiny", "activate", "cli"))
        assert sub.queue.empty()  # no longer subscribed

    asyncio.run(scenario())
