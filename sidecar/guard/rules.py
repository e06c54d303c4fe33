"""Guard settings and the pure rules that judge a version's window.

Defaults, and why (see docs/guard.md for the comparison with Flagger, Argo
Rollouts and Envoy's outlier detection):

- window: the last 200 requests within 30 s. Enough samples for a ratio to
  mean something, short enough to react in seconds at tens of requests/s.
- min_requests 20: no data is not failure; below this nothing is judged
  (Flagger's "no values found" skips an analysis too).
- max_error_ratio 0.1: Argo/Flagger analyses commonly gate at 1-5 % against a
  metric system's minute-long windows; a 200-request window is noisier, and a
  rollback here is instant and reversible, so 10 % trips on a broken model
  (the issue's case is >= 20 %) without tripping on a flaky one.
- consecutive_failures 5: Envoy's consecutive_5xx default, the fast path for a
  model that fails every request.
- latency: p99 above 2x the previous version's p99 *and* at least 5 ms above
  it, with 50+ samples on both sides (a slower but correct model is a
  regression worth undoing at once). The absolute floor matters: at sub-
  millisecond latencies, scheduling noise alone doubles a p99 (seen in this
  project's own tests: 0.07 -> 0.18 ms with nothing wrong).
- probation 600 s: the guard watches a version this long after it became
  active; after that it is trusted (the previous version may be stale by then).
- cooldown 60 s: at most one automatic rollback per model per cooldown, so a
  bad pair cannot flap (Envoy's base ejection time is 30 s and grows).
- mode "auto": a bad verdict on the active version rolls it back (today's
  behaviour). "propose": it changes nothing and records a proposal that a
  person approves or dismisses (the guard acts alone after approve_after_s, if
  set above 0). "off": windows are still recorded (status, metrics) but
  nothing is judged and nothing is done: no rollback, no canary or shadow
  verdict, no quality verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sidecar.guard.window import WindowStats

_MAX_COUNT = 1_000_000  # any count setting above this is a mistake
MODES = ("auto", "propose", "off")


@dataclass(frozen=True, slots=True)
class GuardSettings:
    enabled: bool = True
    window_requests: int = 200
    window_s: float = 30.0
    min_requests: int = 20
    max_error_ratio: float = 0.1
    consecutive_failures: int = 5
    latency_factor: float = 2.0
    latency_min_delta_ms: float = 5.0
    latency_min_samples: int = 50
    probation_s: float = 600.0
    cooldown_s: float = 60.0
    fail_on_nonfinite: bool = False
    # canary: promoted after this many requests and seconds without a verdict
    canary_promote_requests: int = 500
    canary_promote_s: float = 60.0
    # shadow: rejected above this disagreement ratio; promoted when agreeing
    shadow_atol: float = 1e-4
    shadow_rtol: float = 1e-3
    shadow_max_disagreement: float = 0.05
    shadow_min_requests: int = 50
    shadow_promote: bool = False
    shadow_queue: int = 64
    # auto: act; propose: record a proposal for a person; off: record, never act
    mode: str = "auto"
    # propose mode: approve a proposal alone after this many seconds (0: never)
    approve_after_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, changes: dict[str, Any]) -> GuardSettings:
        """A copy with `changes` applied; unknown keys or bad values raise ValueError."""
        known = {f.name: f for f in fields(self)}
        typed: dict[str, Any] = {}
        for key, value in changes.items():
            f = known.get(key)
            if f is None:
                raise ValueError(f"unknown guard setting '{key}' (known: {', '.join(known)})")
            typed[key] = _convert(key, f.type, value)
        result = replace(self, **typed)
        result.check()
        return result

    def check(self) -> None:
        """Refuse settings that cannot work, with the reason (ValueError)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"guard setting '{f.name}' must be a finite number")
            if isinstance(value, int) and not isinstance(value, bool) \
                    and not 0 <= value <= _MAX_COUNT:
                raise ValueError(f"guard setting '{f.name}' must be between 0 and {_MAX_COUNT}")
        if not 0 < self.max_error_ratio <= 1 or not 0 < self.shadow_max_disagreement <= 1:
            raise ValueError("ratios must be in (0, 1]")
        for name in ("window_requests", "min_requests", "consecutive_failures",
                     "latency_min_samples", "canary_promote_requests", "shadow_min_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"guard setting '{name}' must be at least 1")
        if self.window_s <= 0:
            raise ValueError("guard setting 'window_s' must be positive")
        for name in ("probation_s", "cooldown_s", "canary_promote_s", "latency_min_delta_ms",
                     "shadow_atol", "shadow_rtol"):
            if getattr(self, name) < 0:
                raise ValueError(f"guard setting '{name}' must not be negative")
        if self.latency_factor <= 1:
            raise ValueError("latency_factor must be above 1")
        if self.mode not in MODES:
            raise ValueError(f"guard setting 'mode' must be one of {', '.join(MODES)},"
                             f" not {self.mode!r}")
        if self.approve_after_s < 0:
            raise ValueError("guard setting 'approve_after_s' must not be negative")


def _convert(key: str, kind: Any, value: Any) -> Any:
    name = kind if isinstance(kind, str) else kind.__name__
    if name == "str":
        if not isinstance(value, str):
            raise ValueError(f"guard setting '{key}': {value!r} is not a string")
        return value.strip().lower()
    try:
        if name == "bool":
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes", "on"}
            return bool(value)
        return {"int": int, "float": float}[name](value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"guard setting '{key}': {value!r} is not a {name}") from None


@dataclass(frozen=True, slots=True)
class Verdict:
    bad: bool
    rule: str = ""  # error-ratio | consecutive-failures | latency
    evidence: str = ""


OK = Verdict(False)


def judge(stats: WindowStats, settings: GuardSettings, *, p99_ns: float = 0.0,
          samples: int = 0, baseline_p99_ns: float = 0.0, baseline_samples: int = 0
          ) -> Verdict:
    """Whether a version's window shows it failing or slow. Pure."""
    if stats.consecutive_failures >= settings.consecutive_failures:
        return Verdict(True, "consecutive-failures",
                       f"{stats.consecutive_failures} consecutive failures"
                       f" (limit {settings.consecutive_failures})")
    if stats.requests >= settings.min_requests and stats.error_ratio > settings.max_error_ratio:
        return Verdict(True, "error-ratio",
                       f"{stats.failures} of {stats.requests} requests failed"
                       f" ({stats.error_ratio:.1%} > {settings.max_error_ratio:.1%})"
                       f" over {stats.span_s:.1f} s")
    if (samples >= settings.latency_min_samples
            and baseline_samples >= settings.latency_min_samples and baseline_p99_ns > 0
            and p99_ns > settings.latency_factor * baseline_p99_ns
            and p99_ns - baseline_p99_ns > settings.latency_min_delta_ms * 1e6):
        return Verdict(True, "latency",
                       f"p99 {p99_ns / 1e6:.2f} ms > {settings.latency_factor}x the previous"
                       f" version's {baseline_p99_ns / 1e6:.2f} ms and"
                       f" {settings.latency_min_delta_ms:g}+ ms above it ({samples} and"
                       f" {baseline_samples} samples)")
    return OK
