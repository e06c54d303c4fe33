"""The guard's pure parts and its runtime with a simulated clock, in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import make_models
import numpy as np
import pytest

from sidecar.guard.guard import Guard
from sidecar.guard.rules import GuardSettings, judge
from sidecar.guard.shadow import agree
from sidecar.guard.window import OutcomeWindow
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Observer
from sidecar.manager.version import ModelVersion
from sidecar.state.events import EventLog

S = GuardSettings()


def test_window_evicts_by_count_and_by_time() -> None:
    """The window keeps the last N outcomes within T seconds, with exact counts."""
    w = OutcomeWindow(max_requests=4, max_age_s=10)
    for t, ok in [(0, False), (1, True), (2, False), (3, True), (4, True)]:
        w.record(t, ok, 1000)
    s = w.stats(4)
    assert (s.requests, s.failures) == (4, 1)  # the first failure was pushed out
    assert w.stats(12.5).requests == 2  # entries older than 10 s are gone
    assert w.stats(100).failures == 0 and w.total == 5


def test_consecutive_failures_reset_on_success() -> None:
    """The consecutive count is the run of failures since the last success."""
    w = OutcomeWindow(100, 100)
    for ok in [False, False, True, False, False, False]:
        w.record(0, ok, 1)
    assert w.stats(0).consecutive_failures == 3


def test_latency_percentile_of_successes() -> None:
    """p99 is read from successful requests only."""
    w = OutcomeWindow(1000, 100)
    for i in range(1, 101):
        w.record(0, True, i * 1000)
    w.record(0, False, 10**12)
    p99, n = w.latency_percentile(99, 0)
    assert (p99, n) == (99_000, 100)


def _stats(requests: int, failures: int, consecutive: int = 0) -> object:
    w = OutcomeWindow(10_000, 1e9)
    for i in range(requests):
        w.record(0, i >= failures, 1)
    w.consecutive_failures = consecutive
    return w.stats(0)


@pytest.mark.parametrize(
    ("requests", "failures", "consecutive", "rule"),
    [
        (19, 19, 4, ""),  # below min_requests and the consecutive limit: no data, no verdict
        (20, 3, 0, "error-ratio"),  # 15 % > 10 %
        (200, 20, 0, ""),  # exactly 10 %: not above
        (200, 21, 0, "error-ratio"),
        (3, 0, 5, "consecutive-failures"),
    ],
)
def test_judge_error_rules(requests: int, failures: int, consecutive: int, rule: str) -> None:
    """Error ratio needs min_requests; consecutive failures trip on their own."""
    verdict = judge(_stats(requests, failures, consecutive), S)  # type: ignore[arg-type]
    assert verdict.rule == rule and verdict.bad == bool(rule)


@pytest.mark.parametrize(
    ("p99_ms", "baseline_ms", "samples", "bad"),
    [
        (0.18, 0.07, 100, False),  # 2.5x but 0.1 ms: noise, not a regression
        (12.0, 5.0, 100, True),  # 2.4x and 7 ms more
        (9.0, 5.0, 100, False),  # 4 ms more, 1.8x
        (50.0, 5.0, 10, False),  # too few samples
    ],
)
def test_judge_latency_rule(p99_ms: float, baseline_ms: float, samples: int, bad: bool) -> None:
    """Latency trips only above factor x baseline and the absolute floor, with samples."""
    verdict = judge(_stats(100, 0), S, p99_ns=p99_ms * 1e6, samples=samples,  # type: ignore[arg-type]
                    baseline_p99_ns=baseline_ms * 1e6, baseline_samples=samples)
    assert verdict.bad == bad


def test_settings_are_validated() -> None:
    """Unknown keys and bad values are refused; strings are converted."""
    assert S.updated({"max_error_ratio": "0.05"}).max_error_ratio == 0.05
    assert S.updated({"enabled": "false"}).enabled is False
    for bad in ({"nope": "1"}, {"max_error_ratio": "2"}, {"min_requests": "many"}):
        with pytest.raises(ValueError):
            S.updated(bad)


@pytest.mark.parametrize("bad", [
    {"consecutive_failures": "0"}, {"consecutive_failures": "-1"}, {"window_s": "nan"},
    {"latency_factor": "inf"}, {"probation_s": "-1"}, {"window_requests": 1e20},
    {"window_requests": "1e20"}, {"cooldown_s": "-5"}, {"shadow_queue": "-1"},
    {"min_requests": "0"}, {"max_error_ratio": "nan"}, {"shadow_atol": "-inf"},
    {"canary_promote_requests": "0"}, {"latency_min_samples": "0"},
    {"window_requests": float("inf")},
])
def test_settings_that_cannot_work_are_refused(bad: dict[str, object]) -> None:
    """Every setting that cannot work (zero or negative counts, NaN, infinities,
    absurd sizes) is refused with the setting's name in the reason."""
    with pytest.raises(ValueError, match="|".join(bad)):
        S.updated(bad)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ([[0.1, 0.9, 0.0]], [[0.1, 0.9, 0.0]], True),
        ([[0.1, 0.9, 0.0]], [[0.3, 0.6, 0.1]], True),  # differ, same top-1: a classifier agrees
        ([[0.1, 0.9, 0.0]], [[0.9, 0.1, 0.0]], False),
        ([[1.0]], [[1.5]], False),  # not classifier-like: values must be close
        ([[1.0]], [[1.0 + 1e-6]], True),
        ([[1, 2]], [[1, 2, 3]], False),  # shapes differ
    ],
)
def test_shadow_agreement(a: list[list[float]], b: list[list[float]], same: bool) -> None:
    """Answers agree within atol/rtol, or on top-1 for classifier-like outputs."""
    assert agree([np.array(a, np.float32)], [np.array(b, np.float32)], atol=1e-4,
                 rtol=1e-3) is same


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guarded(tmp_path: Path, clock: Clock) -> tuple[ModelManager, Guard]:
    for v in (1, 2):
        make_models.write_model(make_models.tiny_model(v), tmp_path, "tiny", v)
    make_models.write_model(make_models.buggy_model(3), tmp_path, "tiny", 3)
    manager = ModelManager(tmp_path, SessionConfig(), events=EventLog(None))
    guard = Guard(manager, defaults=S, settings_source=lambda _: {}, clock=clock,
                  wall_clock=clock)
    return manager, guard


def _observer(version: ModelVersion | None) -> Observer:
    """The guard's observer of the version's session (what the data plane tells)."""
    assert version is not None and version.servable is not None
    observer = version.servable.observer
    assert observer is not None
    return observer


def test_low_traffic_on_a_healthy_version_never_triggers(tmp_path: Path) -> None:
    """One request a (simulated) second for 20 minutes on a healthy version, with
    latency jitter and an isolated failure once a minute (3 % of any window): the
    guard never acts."""
    async def scenario() -> None:
        clock = Clock()
        manager, guard = _guarded(tmp_path, clock)
        await manager.start()
        guard.start()
        await manager.activate("tiny", "1", actor="cli")
        version = manager.entry("tiny").serving.active
        observer = _observer(version)
        rng = np.random.default_rng(5)
        for second in range(1200):
            clock.now += 1.0
            observer.observe(second % 60 != 0, int(rng.uniform(0.5e6, 8e6)))
        assert await guard.idle() == 0  # nothing was ever scheduled
        assert manager.entry("tiny").serving.active is version
        assert not [e for e in manager.events.page(limit=1000) if e.actor == "guard"]
        await manager.close()

    asyncio.run(scenario())


def test_probation_ends(tmp_path: Path) -> None:
    """After its probation a version is trusted: failures no longer roll it back."""
    async def scenario() -> None:
        clock = Clock()
        manager, guard = _guarded(tmp_path, clock)
        await manager.start()
        guard.start()
        await manager.activate("tiny", "1", actor="cli")
        version = manager.entry("tiny").serving.active
        observer = _observer(version)
        clock.now += S.probation_s + 1
        observer.observe(True, 1)  # first observation after probation
        for _ in range(50):
            observer.observe(False, 1)
        assert await guard.idle() == 0  # nothing was ever scheduled
        assert manager.entry("tiny").serving.active is version
        await manager.close()

    asyncio.run(scenario())
