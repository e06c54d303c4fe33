"""The manager's core rules, in process: real files, real onnxruntime sessions, asyncio.

Drains, `--max-loaded`, quarantine, candidates ended by swaps, the one admission
path, the journal (durability before acknowledgement, never waiting under the
lock), races between commands, the state file's repository and the watermark.
Faults are injected through constructors (a `StateStore` subclass); nothing
private is patched, and nothing sleeps: tests await events, futures or a
bounded number of event-loop ticks.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import interleave
import make_models
import numpy as np
import pytest

from sidecar.errors import FailedPreconditionError, SidecarError, UnavailableError
from sidecar.loader.onnx import SessionConfig, load
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable
from sidecar.manager.version import Phase
from sidecar.state.events import EventLog
from sidecar.state.store import SavedState, StateStore

X = np.ones((1, 4), np.float32)
TIMEOUT = 30.0  # generous bound on any await; never asserted as a duration


# ---- helpers ----------------------------------------------------------------------------


def _repo(root: Path, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    for v in versions:
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


def _manager(repo: Path, state: Path, *, warm: int = 2, max_loaded: int = 4,
             store: StateStore | None = None) -> ModelManager:
    store = store if store is not None else StateStore(state)
    events = EventLog(state)
    store.open()
    events.open()
    return ModelManager(repo, SessionConfig(), store=store, events=events, warm_versions=warm,
                        max_loaded=max_loaded)


def run(repo: Path, state: Path, body: Callable[[ModelManager], Awaitable[None]],
        **kw: Any) -> None:
    async def scenario() -> None:
        manager = _manager(repo, state, **kw)
        await manager.start()
        try:
            await body(manager)
        finally:
            await manager.close()

    asyncio.run(scenario())


def _serving(m: ModelManager) -> tuple[int | None, int | None]:
    s = m.entry("tiny").serving
    return (s.active.number if s.active else None, s.previous.number if s.previous else None)


_infer = interleave.infer


async def _until(condition: Callable[[], bool], ticks: int = 10_000) -> bool:
    """Yield to the event loop until `condition` holds, at most `ticks` times."""
    for _ in range(ticks):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


def _actions(m: ModelManager) -> list[str]:
    return [e.action for e in m.events.page(limit=1000)]


def _disk_events(state: Path) -> list[dict[str, Any]]:
    lines = (state / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class GatedStore(StateStore):
    """A state store whose next saves, once armed, each wait for a gate of the test's."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gates: list[threading.Event] = []
        self.blocked: asyncio.Queue[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls = 0

    def arm(self, count: int) -> list[threading.Event]:
        """Block the next `count` saves; `blocked` gets the call's index as each one waits."""
        self._loop = asyncio.get_running_loop()
        self.blocked = asyncio.Queue()
        self.gates = [threading.Event() for _ in range(count)]
        return list(self.gates)

    def save(self, state: SavedState) -> None:
        gate = self.gates.pop(0) if self.gates else None
        if gate is not None:
            assert self._loop is not None and self.blocked is not None
            self._calls += 1
            self._loop.call_soon_threadsafe(self.blocked.put_nowait, self._calls)
            gate.wait(TIMEOUT)
        super().save(state)


class FullDiskStore(StateStore):
    """A state store that, while `full`, fails every save with ENOSPC."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.full = False

    def save(self, state: SavedState) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().save(state)


# ---- 1. drains that end -----------------------------------------------------------------


def test_each_session_of_a_version_drains_on_its_own(tmp_path: Path) -> None:
    """A version evicted twice has two sessions: releasing the first session's handle
    closes it though the second is still held, and releasing that one ends all drains."""
    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        first = m.acquire("tiny", "2")
        assert isinstance(first, Servable)
        await m.activate("tiny", "1", actor="cli")  # 2 evicted, its session draining
        assert _serving(m) == (1, 3) and m.entry("tiny").versions[2].phase is Phase.UNLOADING
        await m.activate("tiny", "2", actor="cli")  # loaded again: a new session
        second = m.acquire("tiny", "2")
        assert second is not first and not second.closed
        await m.activate("tiny", "3", actor="cli")
        await m.activate("tiny", "1", actor="cli")  # 2 evicted a second time
        assert _serving(m) == (1, 3)
        assert not first.closed and not second.closed

        first.release()
        assert await _until(lambda: first.closed), "first session not closed once released"
        assert not second.closed  # still held by its request
        second.runner.run({"INPUT0": X})  # the request on it still runs
        assert not await m.retired(0)

        second.release()
        assert await m.retired(5)
        assert second.closed and m.entry("tiny").versions[2].phase is Phase.UNLOADED
        assert _infer(m) == 1

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_close_with_handles_held_is_bounded(tmp_path: Path) -> None:
    """`close(grace)` returns although requests still hold the active version and an
    evicted one, and every session is closed when it returns."""
    async def scenario() -> None:
        m = _manager(_repo(tmp_path / "r"), tmp_path / "s")
        await m.start()
        evicted = m.acquire("tiny", "2")
        await m.activate("tiny", "1", actor="cli")  # 2 leaves serving, held: draining
        active = m.acquire("tiny")
        assert active.number == 1
        await asyncio.wait_for(m.close(grace=0.5), TIMEOUT)
        assert active.closed, "the active session held by a request was not closed"
        assert evicted.closed, "the draining (evicted) session was left open by close()"
        active.release()
        evicted.release()

    asyncio.run(scenario())


# ---- 2. --max-loaded ----------------------------------------------------------------------


def test_max_loaded_evicts_the_oldest_held_version(tmp_path: Path) -> None:
    """With --max-loaded 3, loading versions 1..5 keeps at most 3 loaded at any time:
    active and previous always stay, the oldest held version goes first."""
    sizes: list[int] = []

    async def body(m: ModelManager) -> None:
        async def listener(name: str, ready: bool) -> None:
            sizes.append(len(m.entry(name).serving.loaded))

        m.add_listener(listener)
        entry = m.entry("tiny")
        assert _serving(m) == (6, 5)
        expected = {1: {1, 5, 6}, 2: {2, 5, 6}, 3: {3, 5, 6}, 4: {4, 5, 6}, 5: {4, 5, 6}}
        for number in range(1, 6):
            await m.load("tiny", str(number), actor="cli")
            loaded = set(entry.serving.loaded)
            assert loaded == expected[number], f"after load {number}: {sorted(loaded)}"
            assert _serving(m) == (6, 5)
            assert entry.versions[number].phase is Phase.READY
        assert sizes and max(sizes) <= 3, sizes
        assert await m.retired(5)
        for number in (1, 2, 3):
            assert entry.versions[number].phase is Phase.UNLOADED
            assert entry.versions[number].servable is None
        assert _infer(m) == 6 and _infer(m, "4") == 4 and _infer(m, "5") == 5

    run(_repo(tmp_path / "r", (1, 2, 3, 4, 5, 6)), tmp_path / "s", body, max_loaded=3)


# ---- 3. rollback to a quarantined previous ------------------------------------------------


def test_rollback_to_a_quarantined_previous_needs_force(tmp_path: Path) -> None:
    """Rolling back to a quarantined previous version is refused (nothing changes)
    unless forced."""
    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        await m.quarantine_version("tiny", "2", actor="cli", reason="x")
        with pytest.raises(FailedPreconditionError, match="quarantined"):
            await m.rollback("tiny", actor="cli")
        assert _serving(m) == (3, 2) and _infer(m) == 3
        await m.rollback("tiny", actor="cli", force=True)
        assert _serving(m) == (2, 3) and _infer(m) == 2

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


# ---- 4. restart and quarantine --------------------------------------------------------------


@pytest.mark.parametrize(("quarantined", "expected"), [
    ((3,), (2, 1)),  # the saved active: the saved previous serves, 1 is warm
    ((2,), (3, 1)),  # the saved previous: the next loadable one is warm instead
    ((3, 2), (1, None)),
])
def test_restart_never_restores_a_quarantined_version(
        tmp_path: Path, quarantined: tuple[int, ...], expected: tuple[int, int | None]) -> None:
    """After a restart, a quarantined version is neither active nor the warm previous."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    async def first(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        for number in quarantined:
            await m.quarantine_version("tiny", str(number), actor="cli", reason="bad")

    async def second(m: ModelManager) -> None:
        active, previous = _serving(m)
        assert active not in quarantined and previous not in quarantined
        assert (active, previous) == expected
        assert _infer(m) == expected[0]

    run(repo, state, first)
    run(repo, state, second)


# ---- 5. swaps end a running candidate ------------------------------------------------------


@pytest.mark.parametrize("kind", ["canary", "shadow"])
@pytest.mark.parametrize("command", ["activate", "rollback"])
def test_a_swap_ends_a_running_candidate(tmp_path: Path, kind: str, command: str) -> None:
    """Activating another version or rolling back while a canary or shadow runs ends
    it, with a `<kind>-superseded` event and a note saying why."""
    async def body(m: ModelManager) -> None:
        await m.candidates.start("tiny", "1", kind=kind, weight=0.2, actor="cli")
        entry = m.entry("tiny")
        assert (entry.serving.canary or entry.serving.shadow) is entry.versions[1]
        if command == "activate":
            await m.activate("tiny", "2", actor="cli")
        else:
            await m.rollback("tiny", actor="cli")
        assert _serving(m) == (2, 3)
        assert entry.serving.canary is None and entry.serving.shadow is None
        ended = [e for e in m.events.page(limit=1000) if e.action == f"{kind}-superseded"]
        assert len(ended) == 1 and ended[0].from_version == 1, _actions(m)
        assert command in ended[0].reason
        assert f"{kind} of version 1 ended" in entry.note and command in entry.note
        assert _infer(m) == 2

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


# ---- 6. aborting a canary of the previous version ------------------------------------------


def test_aborting_a_canary_of_the_previous_keeps_it_warm(tmp_path: Path) -> None:
    """The warm previous version tried as a canary and aborted stays the warm previous
    version: READY, and the rollback target."""
    async def body(m: ModelManager) -> None:
        entry = m.entry("tiny")
        two = entry.versions[2]
        await m.candidates.start("tiny", "2", kind="canary", weight=0.2, actor="cli")
        assert entry.serving.canary is two
        await m.candidates.abort("tiny", actor="cli", reason="enough")
        assert await m.retired(5)
        assert entry.serving.canary is None
        assert entry.serving.previous is two and two.phase is Phase.READY
        assert entry.state_of(two) == "PREVIOUS"
        assert two.servable is not None and not two.servable.closed
        await m.rollback("tiny", actor="cli")
        assert _serving(m) == (2, 3) and _infer(m) == 2

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


# ---- 7. one admission path ------------------------------------------------------------------


def test_one_admission_path_for_activate_load_and_candidates(tmp_path: Path) -> None:
    """A version that cannot load, and a quarantined one, are refused with the same
    FailedPreconditionError by activate, load and candidates.start."""
    repo = _repo(tmp_path / "r")
    garbage = repo / "tiny" / "4" / "model.onnx"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"this is not an onnx model" * 10)

    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        entry = m.entry("tiny")

        def commands(ref: str) -> list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]]:
            return [
                ("activate", lambda: m.activate("tiny", ref, actor="cli")),
                ("load", lambda: m.load("tiny", ref, actor="cli")),
                ("canary", lambda: m.candidates.start("tiny", ref, kind="canary",
                                                      weight=0.2, actor="cli")),
            ]

        for name, command in commands("4"):
            with pytest.raises(SidecarError) as caught:
                await command()
            assert type(caught.value) is FailedPreconditionError, (name, caught.value)
            assert "cannot be loaded" in str(caught.value), (name, caught.value)
            assert _serving(m) == (3, 2) and set(entry.serving.loaded) == {2, 3}

        await m.quarantine_version("tiny", "1", actor="cli", reason="known bad")
        for name, command in commands("1"):
            with pytest.raises(SidecarError) as caught:
                await command()
            assert type(caught.value) is FailedPreconditionError, (name, caught.value)
            assert "quarantined" in str(caught.value), (name, caught.value)
            assert _serving(m) == (3, 2) and set(entry.serving.loaded) == {2, 3}
            assert entry.versions[1].phase is Phase.UNLOADED  # never even loaded
        assert _infer(m) == 3

    run(repo, tmp_path / "s", body)


# ---- 8. the journal: never waiting for an earlier command's fsyncs -------------------------


def test_a_rollback_never_waits_for_an_earlier_commands_write(tmp_path: Path) -> None:
    """While an activation's state write is blocked, a guard rollback swaps back at
    once; neither command is acknowledged before its own write is durable, and the
    log on disk has the activate line before the rollback line."""
    state = tmp_path / "s"
    store = GatedStore(state)
    gates: list[threading.Event] = []

    async def scenario() -> None:
        m = _manager(_repo(tmp_path / "r"), state, store=store)
        await m.start()
        try:
            assert _serving(m) == (3, 2)
            gates.extend(store.arm(2))
            assert store.blocked is not None
            activation = asyncio.create_task(m.activate("tiny", "1", actor="cli"))
            assert await asyncio.wait_for(store.blocked.get(), TIMEOUT) == 1
            assert _serving(m) == (1, 3)  # swapped in memory, its write still blocked
            rollback = asyncio.create_task(m.rollback("tiny", actor="guard"))
            flipped = await _until(lambda: _serving(m) == (3, 1))
            assert flipped, "the rollback waited for the activation's blocked write"
            assert not gates[0].is_set()
            assert not activation.done() and not rollback.done()  # neither durable yet
            assert _infer(m) == 3

            gates[0].set()  # the activation's write completes; the rollback's blocks
            assert await asyncio.wait_for(store.blocked.get(), TIMEOUT) == 2
            await asyncio.wait_for(activation, TIMEOUT)
            assert not rollback.done()
            on_disk = [(e["action"], e["to_version"]) for e in _disk_events(state)]
            assert ("activate", 1) in on_disk  # (the rollback's line precedes its state)

            gates[1].set()
            result = await asyncio.wait_for(rollback, TIMEOUT)
            assert result.to_version.number == 3
            on_disk = [(e["action"], e["to_version"]) for e in _disk_events(state)]
            assert on_disk.index(("activate", 1)) < on_disk.index(("rollback", 3))
            saved = store.load()
            active = saved.models["tiny"].active
            assert active is not None and active.number == 3
            published = [e.action for e in m.events.page(limit=1000)
                         if e.action in ("activate", "rollback")]
            assert published == ["activate", "rollback"]
        finally:
            for gate in gates:
                gate.set()
            await m.close()

    try:
        asyncio.run(scenario())
    finally:
        for gate in gates:
            gate.set()


# ---- 9. a change that cannot be saved changes nothing --------------------------------------


def test_a_change_that_cannot_be_saved_changes_nothing(tmp_path: Path) -> None:
    """With the disk full, activate and set_pinned fail with UNAVAILABLE and leave
    the serving state and the pin as they were; once writes work again they succeed."""
    store = FullDiskStore(tmp_path / "s")

    async def body(m: ModelManager) -> None:
        entry = m.entry("tiny")
        store.full = True
        with pytest.raises(UnavailableError):
            await m.activate("tiny", "1", actor="cli")
        assert _serving(m) == (3, 2) and set(entry.serving.loaded) == {2, 3}
        assert _infer(m) == 3 and _infer(m, "2") == 2
        with pytest.raises(UnavailableError):
            await m.set_pinned("tiny", True, actor="cli")
        assert entry.pinned is False
        assert not [e for e in m.events.page(limit=1000) if e.action in ("activate", "pin")]

        store.full = False
        await m.activate("tiny", "1", actor="cli")
        await m.set_pinned("tiny", True, actor="cli")
        assert _serving(m) == (1, 3) and entry.pinned and _infer(m) == 1

    run(_repo(tmp_path / "r"), tmp_path / "s", body, store=store)


def test_a_version_loaded_for_an_unsaved_activation_is_not_left_loaded(
        tmp_path: Path) -> None:
    """A version loaded only for an activation that could not be saved is unloaded
    again, as when the activation is refused for any other reason."""
    store = FullDiskStore(tmp_path / "s")

    async def body(m: ModelManager) -> None:
        entry = m.entry("tiny")
        one = entry.versions[1]
        assert one.phase is Phase.UNLOADED
        store.full = True
        with pytest.raises(UnavailableError):
            await m.activate("tiny", "1", actor="cli")
        store.full = False
        assert await m.retired(5)
        assert entry.serving.role(one) is None
        assert one.phase is Phase.UNLOADED and one.servable is None, \
            f"version 1 left {one.phase.name} with an open session outside serving"

    run(_repo(tmp_path / "r"), tmp_path / "s", body, store=store)


# ---- 10. racing commands never leave a broken model ----------------------------------------


_check_serving = interleave.check_serving


def test_racing_commands_never_leave_a_broken_model(tmp_path: Path) -> None:
    """Random interleavings of activate, rollback, load, unload, pin, canary, shadow
    and abort (fixed seed) always leave the active version READY and serving, and
    every request in between runs on an open session (bench/races.py runs
    many seeds)."""
    rng = random.Random(20261129)

    async def body(m: ModelManager) -> None:
        await interleave.rounds(m, rng, 30, TIMEOUT)

    run(_repo(tmp_path / "r", (1, 2, 3, 4)), tmp_path / "s", body, max_loaded=3)


@pytest.mark.parametrize("first", ["unload", "evict"])
def test_a_version_dropped_then_activated_at_once_stays_serving(
        tmp_path: Path, first: str) -> None:
    """A version that leaves serving (unload, or evicted by an activation) and is
    activated again before that change is durable is not closed under the new swap."""
    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        if first == "unload":
            leaving = m.unload("tiny", "2", actor="cli")
        else:
            await m.load("tiny", "1", actor="cli")  # 1 held; activating 1 evicts 2
            leaving = m.activate("tiny", "1", actor="cli")
        results = await asyncio.wait_for(asyncio.gather(
            leaving, m.activate("tiny", "2", actor="cli"), return_exceptions=True), TIMEOUT)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SidecarError):
                raise result
        assert not isinstance(results[1], SidecarError), results[1]
        assert _serving(m)[0] == 2
        assert await m.retired(5)
        _check_serving(m, f"{first} 2 racing activate 2")

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


@pytest.mark.parametrize("model", ["other", "tiny"])
def test_unload_waits_only_for_its_own_drain(tmp_path: Path, model: str) -> None:
    """Unloading a version returns once *its* session closed, while a request still
    holds a session of another version (of the same or another model) draining."""
    repo = _repo(tmp_path / "r")
    for v in (1, 2, 3):
        make_models.write_model(make_models.tiny_model(v), repo, "other", v)

    async def body(m: ModelManager) -> None:
        held = m.acquire("tiny", "2")
        await m.activate("tiny", "1", actor="cli")  # tiny 2 evicted, draining for `held`
        assert _serving(m) == (1, 3) and not held.closed
        target = "3" if model == "tiny" else "2"  # a warm previous version, not held
        leaving = m.entry(model).versions[int(target)].servable
        assert leaving is not None
        events = m.events.subscribe()
        unloading = asyncio.create_task(m.unload(model, target, actor="cli"))
        try:
            while True:  # the unload is durable once its event is published
                event = await asyncio.wait_for(events.next(), TIMEOUT)
                assert event is not None
                if event.action == "unload" and event.model == model:
                    break
            finished = await _until(unloading.done)
            assert finished, f"unload of {model} {target} waits for tiny 2's unrelated drain"
            assert leaving.closed and not held.closed
        finally:
            held.release()
            await asyncio.wait_for(unloading, TIMEOUT)
        assert await m.retired(5) and held.closed

    run(repo, tmp_path / "s", body)


# ---- 11. the state file belongs to its repository ------------------------------------------


def test_state_of_another_repository_is_set_aside(tmp_path: Path) -> None:
    """A manager over repository B with A's state directory starts without A's saved
    state, and the state file is set aside as state.json.other-repository-*."""
    repo_a, repo_b = _repo(tmp_path / "a"), _repo(tmp_path / "b")  # same bytes in both
    state = tmp_path / "s"

    async def on_a(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli")
        await m.set_pinned("tiny", True, actor="cli")

    async def on_b(m: ModelManager) -> None:
        assert _serving(m) == (3, 2) and _infer(m) == 3
        assert m.entry("tiny").pinned is False
        assert list(state.glob("state.json.other-repository-*"))

    run(repo_a, state, on_a)
    run(repo_b, state, on_b)


# ---- 12. versions at or below the watermark --------------------------------------------------


def test_a_version_at_or_below_the_watermark_says_why_it_is_not_serving(
        tmp_path: Path) -> None:
    """A version on disk above the active one but at or below the watermark says it is
    not activated automatically and how to activate it by command."""
    async def body(m: ModelManager) -> None:
        entry = m.entry("tiny")
        assert _serving(m) == (3, 2) and entry.watermark == 3
        await m.rollback("tiny", actor="cli")
        await m.unload("tiny", "3", actor="cli")
        assert _serving(m) == (2, None)
        three = entry.versions[3]
        assert three.phase is Phase.UNLOADED
        why = entry.skipped_reason(three)
        assert why and "sidecar ctl activate tiny 3" in why and "watermark 3" in why
        assert entry.skipped_reason(entry.versions[1]) == ""  # below the active one
        make_models.write_model(make_models.tiny_model(4), tmp_path / "r", "tiny", 4)
        four = await m.resolve(entry, "4")
        assert entry.skipped_reason(four) == ""  # new: above the watermark
        await m.activate("tiny", "3", actor="cli")
        assert entry.skipped_reason(three) == ""

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


# ---- review findings: cancellation, refused candidates, failed restores --------------------


def test_a_cancelled_caller_never_cancels_a_shared_load(tmp_path: Path) -> None:
    """Two commands wait for the same version's load; cancelling the first (its client
    went away) neither cancels the load nor the second command, which activates it."""
    async def body(m: ModelManager) -> None:
        first = asyncio.create_task(m.activate("tiny", "1", actor="cli"))
        await _until(lambda: m.entry("tiny").versions[1].phase is Phase.LOADING)
        second = asyncio.create_task(m.load("tiny", "1", actor="cli"))
        await asyncio.sleep(0)
        first.cancel()
        version = await asyncio.wait_for(second, TIMEOUT)
        assert version.phase is Phase.READY and version.servable is not None
        assert first.cancelled() or first.done()

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_a_cancelled_unload_still_closes_its_session(tmp_path: Path) -> None:
    """An unload whose caller is cancelled while its version drains still closes that
    session once the request holding it ends."""
    async def body(m: ModelManager) -> None:
        held = m.acquire("tiny", "2")
        events = m.events.subscribe()
        unloading = asyncio.create_task(m.unload("tiny", "2", actor="cli"))
        await _until(lambda: m.entry("tiny").versions[2].phase is Phase.UNLOADING)
        unloading.cancel()
        event = await asyncio.wait_for(events.next(), TIMEOUT)  # the change is durable
        assert event is not None and event.action == "unload"
        held.release()
        assert await m.retired(TIMEOUT)
        assert held.closed and m.entry("tiny").versions[2].phase is Phase.UNLOADED

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_a_canary_that_cannot_be_saved_does_not_serve(tmp_path: Path) -> None:
    """A canary start whose write fails answers UNAVAILABLE and takes no traffic."""
    store = FullDiskStore(tmp_path / "s")

    async def body(m: ModelManager) -> None:
        store.full = True
        with pytest.raises(UnavailableError):
            await m.candidates.start("tiny", "1", kind="canary", weight=0.5, actor="cli")
        serving = m.entry("tiny").serving
        assert serving.canary is None and {_infer(m) for _ in range(50)} == {3}

    run(_repo(tmp_path / "r"), tmp_path / "s", body, store=store)


def test_a_failed_restore_keeps_the_saved_state(tmp_path: Path) -> None:
    """A start at which the model's files cannot be loaded (here: every version's file
    unreadable) keeps what was saved, so the next start restores the rollback."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    async def roll_back(m: ModelManager) -> None:
        await m.rollback("tiny", actor="cli")
        assert _serving(m) == (2, 3)

    run(repo, state, roll_back)
    saved = {v: (repo / "tiny" / str(v) / "model.onnx").read_bytes() for v in (1, 2, 3)}
    for v in saved:
        (repo / "tiny" / str(v) / "model.onnx").write_bytes(b"not a model")

    async def broken(m: ModelManager) -> None:
        assert m.entry("tiny").serving.active is None
        await m.set_pinned("tiny", False, actor="cli")  # any write of the state

    run(repo, state, broken)
    for v, data in saved.items():
        (repo / "tiny" / str(v) / "model.onnx").write_bytes(data)

    async def fixed(m: ModelManager) -> None:
        assert _serving(m) == (2, 3)

    run(repo, state, fixed)


def test_a_loader_error_that_is_not_a_load_error_fails_the_version_only(
        tmp_path: Path) -> None:
    """A version whose file vanishes while it loads (an OSError from the loader) is
    FAILED with the reason; the start goes on and serves the next loadable version."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    def loader(path: Path, config: SessionConfig) -> Any:
        if path.parent.name == "3":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return load(path, config)

    async def scenario() -> None:
        store, events = StateStore(state), EventLog(state)
        store.open()
        events.open()
        m = ModelManager(repo, SessionConfig(), store=store, events=events, loader=loader)
        await m.start()
        try:
            assert _serving(m) == (2, 1)
            assert m.entry("tiny").versions[3].phase is Phase.FAILED
            assert "No such file" in m.entry("tiny").versions[3].reason
        finally:
            await m.close()

    asyncio.run(scenario())
