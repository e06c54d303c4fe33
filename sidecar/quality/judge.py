"""The quality rule: is the active version worse than the warm previous one? Pure.

The server may call `judge_quality` after every feedback item, so each test
below is valid under continuous monitoring: the probability that a rule ever
fires wrongly, over unlimited looks, is at most alpha = 1 - confidence (the
family-wise bound of a sequential test, not the per-look level of a
fixed-sample one; re-testing a fixed-sample test at 0.05 after every item
fires wrongly with probability tending to 1). Nothing fires before
`min_samples` rows.

quality-drop (the paired comparison, after >= min_samples paired rows: rows
both versions answered, the previous one through the shadow mirror, and that
got truth). H0: the active version is not worse than the previous one by more
than the margin delta = max_drop; fire when H0 is rejected.

- accuracy: per paired row D = 1 if only the previous version was right (a
  McNemar "b" row), -1 if only the active one was ("c"), 0 if they agree.
  H0: E[D] = P(b) - P(c) <= delta, i.e. accuracy(active) >= accuracy(previous)
  - delta. The test is a betting e-value (testing by betting, Shafer 2021;
  Waudby-Smith & Ramdas 2023): wealth = mean over 9 fixed bets lam of
  prod(1 + lam (D - delta)), a function of the counts (a + d, b, c) only.
  Under H0 it is a nonnegative supermartingale, so by Ville's inequality
  P(ever >= 1/alpha) <= alpha: fire when it reaches 1/alpha (20 for 0.95).
  With delta = 0 it is a mixture of Wald SPRTs on the discordant pairs
  (H0 q = 1/2, q = P(b | discordant)), the spec's suggestion; with delta > 0
  every agreeing row pays the margin. A version equal to its predecessor
  (E[D] = 0 < delta) drives the wealth down geometrically, so its real
  false-alarm rate is far below alpha. Simulated (4 balanced classes, both
  versions 90 % accurate with independent errors, a look after every row,
  300 runs of 10^5 rows): no run fired with delta 0.02; with delta 0, 5 runs
  (1.7 %, within the 5 % bound); a version 0.01 worse (inside the margin),
  1 run. A version always wrong on one class of 4 (0.225 of accuracy lost)
  reaches 20 after a median 52 paired rows (95 % within 146), so with
  min_samples 200 it fires at the 200th row; 0.1 worse: median 330 rows;
  0.05 worse: median about 2000.
  The exact one-sided McNemar p-value is reported as evidence, not used.
- recall, precision, f1: the per-version confidence sequences of the two
  versions on the same paired rows (stats.py: Wilson's interval, or the normal
  approximation for macro averages, with the time-uniform z), each at level
  alpha / 2: fire when previous's lower bound - active's upper bound > delta.
  By the union bound P(ever firing wrongly) <= alpha (asymptotically, as the
  intervals are asymptotic). It ignores the pairing, so it is conservative:
  it needs more rows than the accuracy test for the same drop.
- mae: the paired differences of absolute error, active minus previous;
  H0: their mean <= delta. Fire when the lower bound of the asymptotic
  confidence sequence, mean - z_n sd / sqrt(n) (z_n: `stats.sequential_z` at
  alpha, two-sided, so conservative one-sided), exceeds delta.
- rmse: the same with squared errors; H0: rmse(active) <= rmse(previous) +
  delta, i.e. mean difference of squared errors <= (r + delta)^2 - r^2 with r
  the previous version's rmse on the paired rows (plugged in: asymptotically
  valid).

quality-floor (with "min" set, after >= min_samples rows of the active
version): fire when the active version's confidence sequence (at alpha) lies
entirely on the wrong side of the floor (its upper bound below it; for mae
and rmse, its lower bound above it). Not when the previous version has
min_samples rows and is no better: rolling back to it would not help and
would flap. Its false-alarm bound is alpha on its own; with both rules on, at
most 2 alpha together.

`evidence_key` names a verdict's evidence coarsely (rule, metric, versions,
sample size rounded down to a power of two), so the same evidence is not
proposed twice while new evidence (twice the rows) may be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sidecar.quality.config import QualityConfig
from sidecar.quality.stats import MetricTally, PairedTally, sequential_z

DROP = "quality-drop"
FLOOR = "quality-floor"


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    fire: bool
    rule: str = ""  # quality-drop | quality-floor; "" when nothing fires
    reason: str = ""  # one line with the numbers
    evidence: dict[str, Any] = field(default_factory=dict)  # plain JSON values


@dataclass(frozen=True, slots=True)
class _Check:
    fire: bool
    reason: str
    evidence: dict[str, Any]


def judge_quality(config: QualityConfig, paired: PairedTally, active: MetricTally,
                  previous: MetricTally | None = None) -> QualityVerdict:
    """Whether the active version is confidently worse (see the module's docstring).

    Cheap when nothing fires (about 10 us for accuracy and mae: the counts and
    the e-value; 40-50 us for macro averages once their values differ by more
    than max_drop); a firing verdict carries the full evidence (both versions'
    figures and intervals, the McNemar p-value or the z-test's).
    """
    drop = _drop(config, paired)
    floor = _floor(config, active, previous)
    fire = drop.fire or (floor is not None and floor.fire)
    evidence: dict[str, Any] = {
        "metric": config.metric, "min_samples": config.min_samples,
        "max_drop": config.max_drop, "confidence": config.confidence,
        "active_version": active.version,
        "previous_version": previous.version if previous is not None
        else paired.previous.version,
        "drop": drop.evidence}
    if floor is not None:
        evidence["floor"] = floor.evidence
    if fire:
        evidence["active"] = active.describe()
        evidence["previous"] = previous.describe() if previous is not None else None
    if drop.fire:
        return QualityVerdict(True, DROP, drop.reason, evidence)
    if floor is not None and floor.fire:
        return QualityVerdict(True, FLOOR, floor.reason, evidence)
    reason = drop.reason if floor is None else f"{drop.reason}; {floor.reason}"
    return QualityVerdict(False, "", reason, evidence)


def evidence_key(verdict: QualityVerdict) -> str:
    """A stable name for the verdict's evidence: equal for the same rule, metric and
    versions until the rule's sample size doubles."""
    evidence = verdict.evidence
    part = evidence.get("floor" if verdict.rule == FLOOR else "drop") or {}
    rows = int(part.get("rows", 0))
    bucket = 1 << (rows.bit_length() - 1) if rows > 0 else 0
    return (f"{verdict.rule or 'none'}/{evidence.get('metric', '')}"
            f"/{evidence.get('active_version', 0)}-{evidence.get('previous_version', 0)}"
            f"/{bucket}")


def _drop(config: QualityConfig, paired: PairedTally) -> _Check:
    metric, n = config.metric, paired.samples
    evidence: dict[str, Any] = {"rows": n}
    if n < config.min_samples:
        return _Check(False, f"{metric}: {n} of {config.min_samples} paired rows", evidence)
    new, old = paired.active.value, paired.previous.value
    assert new is not None and old is not None  # n >= min_samples >= 1
    evidence.update(active=_round(new), previous=_round(old))
    head = (f"{metric} {new:.4g} (version {paired.active.version}) against {old:.4g}"
            f" (version {paired.previous.version}) over {n} paired rows")
    alpha, delta = config.alpha, config.max_drop
    if metric == "accuracy":
        log_e = paired.log_evalue(delta)
        e_value = math.exp(min(log_e, 700.0))
        fire = log_e >= math.log(1 / alpha)
        evidence.update(b=paired.b, c=paired.c, e_value=_round(e_value))
        detail = f"b={paired.b} c={paired.c}, e-value {e_value:.3g} vs {1 / alpha:.3g}"
        if fire:
            p = paired.mcnemar_p()
            evidence.update(a=paired.both_right, d=paired.both_wrong,
                            e_threshold=_round(1 / alpha),
                            anytime_p=_round(min(1.0, 1 / e_value)), mcnemar_p=_round(p))
            detail += f", one-sided McNemar p {p:.2g}"
    elif metric in ("recall", "precision", "f1"):
        if old - new <= delta:  # cannot fire: each interval holds its value
            fire = False
            detail = f"observed drop {old - new:.4g}"
        else:
            old_low = paired.previous.sequential_interval(alpha / 2)[0]
            new_high = paired.active.sequential_interval(alpha / 2)[1]
            fire = old_low - new_high > delta
            evidence.update(previous_low=_round(old_low), active_high=_round(new_high))
            detail = f"previous >= {old_low:.4g}, active <= {new_high:.4g} at every look"
    else:
        squared = metric == "rmse"
        diff = paired.difference(squared)
        margin = (old + delta) ** 2 - old * old if squared else delta
        se = math.sqrt(diff.variance / diff.count)
        low = diff.mean - sequential_z(diff.count, alpha, config.min_samples) * se
        fire = low > margin
        what = "squared" if squared else "absolute"
        evidence.update(difference=_round(diff.mean), difference_low=_round(low),
                        margin=_round(margin))
        detail = (f"mean {what} error difference {diff.mean:.4g} >= {low:.4g} at every look,"
                  f" margin {margin:.4g}")
        if fire:
            p = paired.z_test(margin, squared)[1]
            evidence.update(difference_sd=_round(math.sqrt(diff.variance)), z_test_p=_round(p))
            detail += f", z-test p {p:.2g}"
    if fire:
        evidence.update(active_interval=_pair(paired.active.interval()),
                        previous_interval=_pair(paired.previous.interval()))
    verb = "worse" if fire else "not shown worse"
    return _Check(fire, f"{head}: {verb} by more than {delta:g} ({detail})", evidence)


def _floor(config: QualityConfig, active: MetricTally, previous: MetricTally | None
           ) -> _Check | None:
    floor = config.floor
    if floor is None:
        return None
    metric, n = config.metric, active.rows
    evidence: dict[str, Any] = {"rows": n, "min": floor}
    if n < config.min_samples:
        return _Check(False, f"floor: {n} of {config.min_samples} rows", evidence)
    value = active.value
    assert value is not None
    low, high = active.sequential_interval()
    evidence.update(value=_round(value), sequential_interval=_pair((low, high)))
    better = config.higher_is_better
    beyond = high < floor if better else low > floor
    word = "below" if better else "above"
    if not beyond:
        return _Check(False, f"{metric} {value:.4g} not shown {word} the floor {floor:g}",
                      evidence)
    head = (f"{metric} {value:.4g} of version {active.version} is {word} the floor {floor:g}"
            f" ({'<=' if better else '>='} {high if better else low:.4g} at every look,"
            f" {n} rows)")
    old = previous.value if previous is not None and previous.rows >= config.min_samples \
        else None
    if old is not None and (old <= value if better else old >= value):
        assert previous is not None
        evidence.update(previous=_round(old), held="the previous version is no better")
        return _Check(False, f"{head}, but version {previous.version} is no better"
                      f" ({old:.4g})", evidence)
    return _Check(True, head, evidence)


def _round(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _pair(bounds: tuple[float, float]) -> list[float | None]:
    return [_round(bounds[0]), _round(bounds[1])]
