"""The manager, in process: real files, real onnxruntime sessions, asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import make_models
import numpy as np
import pytest

from sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from sidecar.loader.onnx import LoadedModel, SessionConfig, load
from sidecar.manager.manager import ModelManager
from sidecar.state.events import EventLog
from sidecar.state.store import StateStore

X = np.ones((1, 4), np.float32)


def _repo(root: Path, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    for v in versions:
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


def _manager(repo: Path, state: Path, *, warm: int = 2,
             loader: Callable[[Path, SessionConfig], LoadedModel] = load) -> ModelManager:
    store, events = StateStore(state), EventLog(state)
    store.open()
    events.open()
    return ModelManager(repo, SessionConfig(), store=store, events=events, warm_versions=warm,
                        loader=loader)


def run(repo: Path, state: Path, body: Callable[[ModelManager], Awaitable[None]], **kw: object
        ) -> None:
    async def scenario() -> None:
        manager = _manager(repo, state, **kw)  # type: ignore[arg-type]
        await manager.start()
        try:
            await body(manager)
        finally:
            await manager.close()

    asyncio.run(scenario())


def _serving(m: ModelManager) -> tuple[int | None, int | None]:
    s = m.entry("tiny").serving
    return (s.active.number if s.active else None, s.previous.number if s.previous else None)


def _output(m: ModelManager, version: str = "") -> tuple[int, np.ndarray]:
    handle = m.acquire("tiny", version)
    try:
        return handle.number, handle.runner.run({"INPUT0": X})[0]
    finally:
        handle.release()


def test_start_serves_highest_with_next_highest_warm(tmp_path: Path) -> None:
    """No saved state: the highest version is active, the next highest is previous,
    and the rest stay on disk unloaded."""
    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, 2)
        assert m.entry("tiny").state_of(m.entry("tiny").versions[1]) == "UNLOADED"
        number, out = _output(m)
        w, b = make_models.tiny_weights(3)
        assert number == 3 and np.allclose(out, X @ w + b, rtol=1e-5)

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_activate_by_number_and_digest_then_rollback_twice(tmp_path: Path) -> None:
    """Activate by number, by digest prefix; rollback swaps back, a second rollback
    swaps forward again; every swap is one assignment visible to the next request."""
    async def body(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli")
        assert _serving(m) == (1, 3) and _output(m)[0] == 1
        digest = m.entry("tiny").versions[2].digest or (
            await m.identify(m.entry("tiny").versions[2])).digest  # type: ignore[union-attr]
        await m.activate("tiny", digest[:12], actor="cli")
        assert _serving(m) == (2, 1)
        result = await m.rollback("tiny", actor="cli")
        assert _serving(m) == (1, 2) and _output(m)[0] == 1 and result.to_version.number == 1
        await m.rollback("tiny", actor="cli")
        assert _serving(m) == (2, 1)
        actions = [e.action for e in m.events.page(limit=100)]
        assert actions[-4:] == ["activate", "activate", "rollback", "rollback"]

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_bad_references_are_refused(tmp_path: Path) -> None:
    """A short digest prefix or junk is INVALID_ARGUMENT; an absent one NOT_FOUND."""
    async def body(m: ModelManager) -> None:
        with pytest.raises(InvalidInputError, match="12"):
            await m.activate("tiny", "abc", actor="cli")
        with pytest.raises(NotFoundError):
            await m.activate("tiny", "0" * 12, actor="cli")
        with pytest.raises(NotFoundError):
            await m.activate("tiny", "9", actor="cli")
        assert _serving(m) == (3, 2)

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_expected_active_refuses_a_stale_command(tmp_path: Path) -> None:
    """Two tools saw version 3 active; the second one's command is refused."""
    async def body(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli", expected_active="3")
        with pytest.raises(FailedPreconditionError, match="expected active '3'"):
            await m.activate("tiny", "2", actor="cli", expected_active="3")
        with pytest.raises(FailedPreconditionError):
            await m.rollback("tiny", actor="cli", expected_active="3")
        assert _serving(m) == (1, 3)

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_one_warm_version_means_no_instant_rollback(tmp_path: Path) -> None:
    """--warm-versions 1 keeps only the active version; rollback says why it cannot."""
    async def body(m: ModelManager) -> None:
        assert _serving(m) == (3, None)
        await m.activate("tiny", "1", actor="cli")
        assert _serving(m) == (1, None)
        await m.retired()
        assert m.entry("tiny").versions[3].loaded is None  # unloaded, memory freed
        with pytest.raises(FailedPreconditionError, match="warm-versions is 1"):
            await m.rollback("tiny", actor="cli")

    run(_repo(tmp_path / "r"), tmp_path / "s", body, warm=1)


def test_warm_budget_evicts_the_oldest_but_keeps_held_loads(tmp_path: Path) -> None:
    """With 2 warm versions, activating a third unloads the oldest; a version loaded
    by `load` stays warm beyond the budget until it is activated."""
    async def body(m: ModelManager) -> None:
        await m.load("tiny", "1", actor="cli")
        entry = m.entry("tiny")
        assert sorted(entry.serving.loaded) == [1, 2, 3]
        assert entry.state_of(entry.versions[1]) == "WARM"
        await m.activate("tiny", "1", actor="cli")
        assert _serving(m) == (1, 3) and sorted(entry.serving.loaded) == [1, 3]
        await m.retired()
        assert entry.versions[2].loaded is None

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_incompatible_signature_is_refused_unless_forced(tmp_path: Path) -> None:
    """A version whose input shape differs is refused with the difference spelled out;
    force activates it anyway."""
    repo = _repo(tmp_path / "r", (1,))
    make_models.write_model(make_models.dense_model(width=8, hidden=8), repo, "tiny", 2)

    async def body(m: ModelManager) -> None:
        assert _serving(m)[0] == 2  # the 8-wide model is the highest
        with pytest.raises(FailedPreconditionError, match=r"\[-1, 8\] -> \[-1, 4\]"):
            await m.activate("tiny", "1", actor="cli")
        assert _serving(m)[0] == 2
        await m.activate("tiny", "1", actor="cli", force=True)
        assert _serving(m)[0] == 1
        with pytest.raises(FailedPreconditionError, match=r"\[-1, 4\] -> \[-1, 8\]"):
            await m.activate("tiny", "2", actor="cli")

    run(repo, tmp_path / "s", body)


def test_pin_blocks_automatic_actors_only(tmp_path: Path) -> None:
    """A pinned model refuses the watcher and the guard; a person's command works."""
    async def body(m: ModelManager) -> None:
        await m.set_pinned("tiny", True, actor="cli")
        for actor in ("watcher", "guard"):
            with pytest.raises(FailedPreconditionError, match="pinned"):
                await m.activate("tiny", "1", actor=actor)
            with pytest.raises(FailedPreconditionError, match="pinned"):
                await m.rollback("tiny", actor=actor)
        await m.rollback("tiny", actor="cli")
        assert _serving(m) == (2, 3)

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_the_active_version_is_never_unloaded_alone(tmp_path: Path) -> None:
    """Unloading the active version is refused; the previous one can go."""
    async def body(m: ModelManager) -> None:
        with pytest.raises(FailedPreconditionError, match="is active"):
            await m.unload("tiny", "3", actor="cli")
        await m.unload("tiny", "2", actor="cli")
        assert _serving(m) == (3, None)

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_unload_drains_before_closing(tmp_path: Path) -> None:
    """A version held by a request leaves serving at once, but its session closes
    only after the request releases it; the request finishes on it."""
    async def body(m: ModelManager) -> None:
        handle = m.acquire("tiny", "2")
        events = m.events.subscribe()
        unloading = asyncio.create_task(m.unload("tiny", "2", actor="cli"))
        event = await asyncio.wait_for(events.next(), 5)  # published as it leaves serving
        assert event is not None and event.action == "unload"
        assert handle.version.phase.name == "UNLOADING"
        assert not m.is_ready("tiny", "2")  # no new request can take it
        handle.runner.run({"INPUT0": X})  # the in-flight request still runs
        assert not unloading.done()
        handle.release()
        await asyncio.wait_for(unloading, 5)
        assert handle.closed and handle.version.phase.name == "UNLOADED"

    run(_repo(tmp_path / "r"), tmp_path / "s", body)


def test_restart_restores_the_saved_versions_not_the_newest(tmp_path: Path) -> None:
    """After activating version 1, a new manager on the same state serves 1 with 3
    as previous: the saved state wins over "newest on disk"."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    async def first(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli")

    async def second(m: ModelManager) -> None:
        assert _serving(m) == (1, 3)
        restore = [e for e in m.events.page(limit=100) if e.action == "restore"][-1]
        assert "restored the saved" in restore.reason

    run(repo, state, first)
    run(repo, state, second)


def test_changed_file_falls_back_to_the_highest_with_an_event(tmp_path: Path) -> None:
    """If the saved active version's file now has other bytes, the restart logs a
    mismatch event and serves the highest loadable version instead."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    async def first(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli")

    async def second(m: ModelManager) -> None:
        assert _serving(m)[0] == 3
        actions = {e.action: e for e in m.events.page(limit=100)}
        assert "restore-mismatch" in actions
        assert "no longer on disk" in actions["restore-mismatch"].reason

    run(repo, state, first)
    make_models.write_model(make_models.tiny_model(7), repo, "tiny", 1)  # other bytes
    run(repo, state, second)


def test_moved_file_is_found_by_digest(tmp_path: Path) -> None:
    """If the saved digest now lives under another number, that version is restored."""
    repo, state = _repo(tmp_path / "r"), tmp_path / "s"

    async def first(m: ModelManager) -> None:
        await m.activate("tiny", "1", actor="cli")

    async def second(m: ModelManager) -> None:
        assert _serving(m)[0] == 5
        assert any(e.action == "restore-moved" for e in m.events.page(limit=100))

    run(repo, state, first)
    (repo / "tiny" / "1").rename(repo / "tiny" / "5")
    run(repo, state, second)


def test_a_slow_load_does_not_delay_a_rollback(tmp_path: Path) -> None:
    """While version 1 is still loading for an activation, a rollback completes."""
    gate, entered = threading.Event(), threading.Event()

    def gated_load(path: Path, config: SessionConfig) -> LoadedModel:
        if path.parent.name == "1":
            entered.set()
            gate.wait(30)  # holds the load thread, like a 100 MB model would
        return load(path, config)

    async def body(m: ModelManager) -> None:
        activation = asyncio.create_task(m.activate("tiny", "1", actor="cli"))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, entered.wait, 10)
        assert m.entry("tiny").versions[1].phase.name == "LOADING"
        await asyncio.wait_for(m.rollback("tiny", actor="cli"), 5)
        assert _serving(m) == (2, 3) and not activation.done()
        gate.set()
        await asyncio.wait_for(activation, 30)
        assert _serving(m) == (1, 2)

    try:
        run(_repo(tmp_path / "r"), tmp_path / "s", body, loader=gated_load)
    finally:
        gate.set()


def test_a_rollback_never_waits_for_an_evicted_version_to_drain(tmp_path: Path) -> None:
    """Activating 1 evicts version 2 while a request holds it: the activation and a
    rollback right after both finish at once; 2 closes only when the request ends."""
    async def body(m: ModelManager) -> None:
        handle = m.acquire("tiny", "2")  # a long request on the previous version
        await asyncio.wait_for(m.activate("tiny", "1", actor="cli"), 5)
        assert _serving(m) == (1, 3) and handle.version.phase.name == "UNLOADING"
        await asyncio.wait_for(m.rollback("tiny", actor="cli"), 5)
        assert _serving(m) == (3, 1)
        assert not handle.closed  # still open for the request holding it
        handle.release()
        await asyncio.wait_for(m.retired(), 5)
        assert handle.closed and handle.version.phase.name == "UNLOADED"

    run(_repo(tmp_path / "r"), tmp_path / "s", body)
