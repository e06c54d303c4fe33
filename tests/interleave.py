"""Random interleavings of every command that changes a model, with requests in
between, and the invariant checked after each round: every version in a serving
state is READY with an open session and answers. Run by tests/test_core.py with a
fixed seed and by bench/races.py with many."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import numpy as np

from sidecar.errors import SidecarError
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable
from sidecar.manager.version import Phase

X = np.ones((1, 4), np.float32)


def infer(m: ModelManager, version: str = "") -> int:
    """Run one inference on what `acquire` hands out; the number that answered."""
    handle = m.acquire("tiny", version)
    try:
        out = handle.runner.run({"INPUT0": X})[0]
        assert out.shape == (1, 3)
        return handle.number
    finally:
        handle.release()


def check_serving(m: ModelManager, where: str) -> None:
    """Every model with an active version: everything in its serving state is READY
    with an open session, and a request runs on it."""
    for entry in m.entries():
        serving = entry.serving
        if serving.active is None:
            continue
        roles = [("active", serving.active), ("previous", serving.previous),
                 ("canary", serving.canary), ("shadow", serving.shadow),
                 *((f"loaded {n}", v) for n, v in serving.loaded.items())]
        for role, version in roles:
            if version is None:
                continue
            assert version.phase is Phase.READY, f"{where}: {role} {version.label} is" \
                f" {version.phase.name}"
            assert version.servable is not None and not version.servable.closed, \
                f"{where}: {role} {version.label} has no open session"
            assert serving.loaded.get(version.number) is version, f"{where}: {role}"
        for number in serving.loaded:
            assert infer(m, str(number)) == number, where
        infer(m)


def random_command(m: ModelManager, rng: random.Random
                    ) -> tuple[str, Coroutine[Any, Any, Any]]:
    loaded = sorted(m.entry("tiny").serving.loaded)  # favour versions with a session
    v = str(rng.choice(loaded) if loaded and rng.random() < 0.5 else rng.randint(1, 4))
    kind = rng.choice(["activate", "activate", "activate", "rollback", "load", "unload",
                       "unload", "unload", "pin", "unpin", "canary", "shadow", "abort"])
    if kind == "activate":
        return f"activate {v}", m.activate("tiny", v, actor="cli")
    if kind == "rollback":
        actor = rng.choice(["cli", "guard"])
        return f"rollback ({actor})", m.rollback("tiny", actor=actor)
    if kind == "load":
        return f"load {v}", m.load("tiny", v, actor="cli")
    if kind == "unload":
        return f"unload {v}", m.unload("tiny", v, actor="cli")
    if kind in ("pin", "unpin"):
        return kind, m.set_pinned("tiny", kind == "pin", actor="cli")
    if kind in ("canary", "shadow"):
        return f"{kind} {v}", m.candidates.start("tiny", v, kind=kind, weight=0.3,
                                                 actor="cli")
    return "abort", m.candidates.abort("tiny", actor="cli")


async def release_after(handle: Servable, ticks: int) -> None:
    for _ in range(ticks):
        await asyncio.sleep(0)
    handle.release()


async def probe(m: ModelManager, done: asyncio.Event, failures: list[str]) -> None:
    """Requests naming no version, one per event-loop tick until `done`: each must be
    handed a READY version's open session and run on it."""
    while not done.is_set():
        try:
            handle = m.acquire("tiny")
        except Exception as exc:  # any failure is the finding
            failures.append(f"acquire: {exc!r}")
        else:
            try:
                if handle.version.phase is not Phase.READY or handle.closed:
                    failures.append(f"handed {handle.label} while {handle.version.phase.name}"
                                    f"{' (closed)' if handle.closed else ''}")
                else:
                    handle.runner.run({"INPUT0": X})
            except Exception as exc:
                failures.append(f"run on {handle.label}: {exc!r}")
            finally:
                handle.release()
        await asyncio.sleep(0)


async def rounds(m: ModelManager, rng: random.Random, count: int, limit_s: float) -> None:
    """`count` rounds of 2-6 random commands at once on model "tiny" (versions 1-4),
    a request held across each round and a probe request every loop tick; raises
    AssertionError naming the round and its commands on any violation."""
    check_serving(m, "start")
    for round_ in range(count):
        picked = [random_command(m, rng) for _ in range(rng.randint(2, 6))]
        names = [name for name, _ in picked]
        held = m.acquire("tiny")  # a request in flight during the round
        done, failures = asyncio.Event(), []
        watcher = asyncio.create_task(probe(m, done, failures))
        try:
            results = await asyncio.wait_for(asyncio.gather(
                *(c for _, c in picked), release_after(held, rng.randint(0, 30)),
                return_exceptions=True), limit_s)
            assert await m.retired(limit_s)
        finally:
            done.set()
            await watcher
        assert not failures, f"round {round_} {names}: requests failed: {failures[:3]}"
        for name, result in zip(names, results, strict=False):
            if isinstance(result, BaseException) and not isinstance(result, SidecarError):
                raise AssertionError(f"round {round_} {names}: {name} raised"
                                     f" {result!r}") from result
        check_serving(m, f"round {round_} {names}")
    assert await m.retired(10)
    check_serving(m, "end")
