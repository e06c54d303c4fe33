"""Accumulators of per-row outcomes, per (model, version) and per pair of versions.

`MetricTally` holds one version's counts in bounded memory: rows, correct rows
and, per class, true positives, support (rows of that true class) and
predictions (rows predicted as that class) -- the parts of the confusion
matrix that accuracy, recall, precision and f1 need. Classes at or above
`class_cap` (1000), and negative predicted labels, are lumped into one extra
class (which then counts as one class in macro averages): at most three
arrays of 1001 int64 (24 KB). For regression it holds running moments
(Welford) of each row's absolute and squared error.

Intervals (`interval`: fixed sample, two-sided at the configured confidence;
`sequential_interval`: valid at every look at once, for the judge):
- a proportion (accuracy; binary recall and precision on their own
  denominators): Wilson's score interval;
- binary f1 = 2u / (1 + u) where u = TP / (TP + FP + FN) is a proportion:
  Wilson's interval on u, mapped through that increasing function;
- macro recall, precision, f1 (classification): the normal approximation
  value +- z * sqrt(sum of the classes' variances) / classes, each class's
  variance from its own proportion (smoothed (x + 1) / (n + 2) so that 0/n and
  n/n do not claim zero variance; f1 by the delta method through u), classes
  treated as independent;
- mae: the normal interval on the mean absolute error; rmse: the normal
  interval on the mean squared error, mapped through the square root.
Macro averages run over the classes seen in the truth or in the predictions,
and a class with an empty denominator scores 0 (scikit-learn's macro average
with zero_division=0).

`sequential_interval` replaces the normal quantile z by the time-uniform
`sequential_z(n)`: the boundary of Robbins' normal-mixture martingale, which a
standardised sum crosses, ever, with probability at most alpha (exact for
Gaussian sums, asymptotically for these statistics: an "asymptotic confidence
sequence", Waudby-Smith et al. 2021). Its mixing parameter makes it tightest
near n = min_samples, where it is about 3.0 for alpha 0.05 instead of 1.96,
and it grows like sqrt(log n) after (3.8 at n = 10^5).

`PairedTally` holds the rows both versions answered and that got truth: the
2x2 McNemar table (a: both right, b: previous right and active wrong, c:
previous wrong and active right, d: both wrong), the moments of the paired
differences of error (regression), and one MetricTally per version over these
same rows. It gives the exact one-sided McNemar p-value (for reading; fixed
sample), the betting e-value the judge decides with (see `log_evalue`), and a
paired z-test of the error difference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace
from statistics import NormalDist

import numpy as np

from sidecar.quality.config import METRICS, QualityConfig
from sidecar.quality.score import FloatArray, IntArray, Outcomes

CLASS_CAP = 1000
_NORMAL = NormalDist()

#: bets of the e-value's mixture, as fractions of the largest allowed bet
_BETS = (1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 0.7, 0.85)
_LOG_WEIGHT = -math.log(len(_BETS))


# -- intervals and tests ---------------------------------------------------------------

def normal_z(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def sequential_z(n: int | float, alpha: float, scale: int | float) -> float:
    """The z of a two-sided confidence sequence at level 1 - alpha, at sample size n.

    Robbins' normal mixture: a standardised sum S_n crosses
    +-sqrt((n + rho) * (2 log(1/alpha) + log((n + rho) / rho))) at some n with
    probability at most alpha; divided by sqrt(n) this is the z returned.
    rho = scale / (L + log(L + 1)), L = 2 log(1/alpha), makes the boundary
    tightest near n = scale (Howard et al. 2021).
    """
    if n <= 0:
        return math.inf
    big_l = 2 * math.log(1 / alpha)
    rho = max(scale, 1) / (big_l + math.log(big_l + 1))
    return math.sqrt((n + rho) / n * (big_l + math.log((n + rho) / rho)))


def wilson(x: int | float, n: int | float, z: float) -> tuple[float, float]:
    """Wilson's score interval for x successes in n trials ([0, 1] when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = x / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_half_upper_tail(n: int, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), stable for n up to 10^6 and beyond.

    Sums the pmf in log space from the tail's near end (a recurrence of
    ratios), over at most 8 sqrt(n) + 16 terms: further terms are below
    e^-128 of the sum. The tail below the middle is one minus its mirror.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if 2 * k <= n:  # P(X >= k) = 1 - P(X <= k - 1) = 1 - P(X >= n - k + 1)
        return max(0.0, 1.0 - binomial_half_upper_tail(n, n - k + 1))
    last = min(n, k + 8 * math.isqrt(n) + 16)
    i = np.arange(k, last, dtype=np.float64)  # ratio pmf(i + 1) / pmf(i) = (n - i) / (i + 1)
    logs = np.empty(last - k + 1)
    logs[0] = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    logs[1:] = logs[0] + np.cumsum(np.log((n - i) / (i + 1)))
    top = float(logs.max())
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))


def mcnemar_p(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value for "the active version is worse": P(X >= b),
    X ~ Binomial(b + c, 1/2) (b: previous right, active wrong; c: the reverse)."""
    return binomial_half_upper_tail(b + c, b)


def log_evalue(concordant: int, b: int, c: int, margin: float) -> float:
    """Log of the betting e-value against H0: P(b) - P(c) <= margin (per paired row).

    Each paired row has D = 1 (a b row), -1 (a c row) or 0 (concordant). A bet
    of size lam in (0, 1 / (1 + margin)) multiplies the wealth by
    1 + lam * (D - margin), whose mean is at most 1 under H0, so the wealth is
    a nonnegative supermartingale; a fixed-weight mixture of such bets is one
    too, and by Ville's inequality it ever reaches 1/alpha with probability at
    most alpha, however often it is looked at. With fixed bets the wealth
    depends on the counts only. With margin 0 concordant rows do not count and
    each bet is a Wald SPRT on discordant pairs (H0 q = 1/2 against
    q = (1 + lam) / 2, q = P(b | discordant)).
    """
    logs = [concordant * zero + b * one + c * minus for zero, one, minus in _bet_logs(margin)]
    high = max(logs)
    return high + math.log(sum(math.exp(x - high) for x in logs)) + _LOG_WEIGHT


@functools.lru_cache(maxsize=16)
def _bet_logs(margin: float) -> tuple[tuple[float, float, float], ...]:
    """Per bet, the log of the wealth factor for D = 0, 1 and -1."""
    top = 1.0 / (1.0 + margin)
    return tuple((math.log1p(-lam * margin), math.log1p(lam * (1 - margin)),
                  math.log1p(-lam * (1 + margin))) for lam in (f * top for f in _BETS))


def one_sided_p(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


class Moments:
    """Count, mean and sum of squared deviations of a stream of numbers (Welford,
    merged a batch at a time: Chan et al.)."""

    __slots__ = ("count", "m2", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, values: FloatArray) -> None:
        n = int(values.shape[0])
        if n == 0:
            return
        if n == 1:
            x = float(values[0])
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 in the denominator); 0 below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    def mean_interval(self, z: float) -> tuple[float, float]:
        if self.count == 0:
            return -math.inf, math.inf
        half = z * math.sqrt(self.variance / self.count)
        return self.mean - half, self.mean + half


# -- one version -----------------------------------------------------------------------

class MetricTally:
    """One version's outcomes: the configured metric, its sample size and intervals."""

    __slots__ = ("_abs", "_cap", "_predicted", "_sq", "_support", "_tp", "config", "correct",
                 "nonfinite", "rows", "version")

    def __init__(self, config: QualityConfig, *, version: int = 0,
                 class_cap: int = CLASS_CAP) -> None:
        self.config = config
        self.version = version
        self.rows = 0  # rows counted in the metric
        self.correct = 0  # classification, binary
        self.nonfinite = 0  # regression rows whose prediction was not finite (left out)
        self._cap = class_cap
        size = 2 if config.task == "binary" else 0
        self._tp: IntArray = np.zeros(size, np.int64)
        self._support: IntArray = np.zeros(size, np.int64)
        self._predicted: IntArray = np.zeros(size, np.int64)
        self._abs = Moments()
        self._sq = Moments()

    def add(self, outcomes: Outcomes) -> None:
        if self.config.task == "regression":
            self._add_errors(outcomes.abs_error, outcomes.sq_error)
        else:
            self._add_labels(outcomes.predicted, outcomes.actual)

    def _add_errors(self, abs_error: FloatArray, sq_error: FloatArray) -> None:
        finite = np.isfinite(sq_error)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            abs_error, sq_error = abs_error[finite], sq_error[finite]
        self.rows += int(abs_error.shape[0])
        self._abs.add(abs_error)
        self._sq.add(sq_error)

    def _add_labels(self, predicted: IntArray, actual: IntArray) -> None:
        n = int(actual.shape[0])
        if n == 0:
            return
        cap = self._cap
        if n == 1:  # the common case, one row per feedback: cheaper than bincount
            p, a = int(predicted[0]), int(actual[0])
            hit = p == a
            p = p if 0 <= p < cap else cap
            a = a if 0 <= a < cap else cap
            if p >= self._tp.shape[0] or a >= self._tp.shape[0]:
                self._grow(max(p, a) + 1)
            if hit:
                self._tp[a] += 1
                self.correct += 1
            self._support[a] += 1
            self._predicted[p] += 1
            self.rows += 1
            return
        hits = predicted == actual
        guessed = np.where((predicted >= 0) & (predicted < cap), predicted, cap)
        true = np.where((actual >= 0) & (actual < cap), actual, cap)
        size = int(max(guessed.max(), true.max())) + 1
        if size > self._tp.shape[0]:
            self._grow(size)
        size = self._tp.shape[0]
        self._support += np.bincount(true, minlength=size)
        self._predicted += np.bincount(guessed, minlength=size)
        self._tp += np.bincount(true[hits], minlength=size)
        self.correct += int(hits.sum())
        self.rows += n

    def _grow(self, size: int) -> None:
        size = max(size, min(2 * self._tp.shape[0], self._cap + 1))
        for name in ("_tp", "_support", "_predicted"):
            old = getattr(self, name)
            new = np.zeros(size, np.int64)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    # -- reading ---

    @property
    def value(self) -> float | None:
        """The metric over the rows so far; None before any row."""
        if self.rows == 0:
            return None
        metric = self.config.metric
        if metric == "accuracy":
            return self.correct / self.rows
        if metric == "mae":
            return self._abs.mean
        if metric == "rmse":
            return math.sqrt(max(self._sq.mean, 0.0))
        if self.config.task == "binary":
            x, n = self._binary_counts()
            value = x / n if n else 0.0
            return 2 * value / (1 + value) if metric == "f1" else value
        return self._macro(1.0)[0]

    @property
    def mean_squared_error(self) -> float:
        return self._sq.mean

    def interval(self) -> tuple[float, float]:
        """Two-sided, fixed sample, at the configured confidence."""
        z = normal_z(self.config.confidence)
        return self._interval(lambda n: z)

    def sequential_interval(self, alpha: float | None = None) -> tuple[float, float]:
        """Two-sided, valid at every sample size at once (probability >= 1 - alpha)."""
        a = self.config.alpha if alpha is None else alpha
        scale = self.config.min_samples
        return self._interval(lambda n: sequential_z(n, a, scale))

    def _interval(self, z_at: Callable[[int], float]) -> tuple[float, float]:
        metric = self.config.metric
        if self.rows == 0:
            return (0.0, 1.0) if self.config.higher_is_better else (0.0, math.inf)
        if metric == "accuracy":
            return wilson(self.correct, self.rows, z_at(self.rows))
        if metric == "mae":
            low, high = self._abs.mean_interval(z_at(self._abs.count))
            return max(0.0, low), high
        if metric == "rmse":
            low, high = self._sq.mean_interval(z_at(self._sq.count))
            return math.sqrt(max(0.0, low)), math.sqrt(max(0.0, high))
        if self.config.task == "binary":
            x, n = self._binary_counts()
            low, high = wilson(x, n, z_at(n))
            if metric == "f1":
                return 2 * low / (1 + low), 2 * high / (1 + high)
            return low, high
        value, spread = self._macro(z_at(self.rows))
        return max(0.0, value - spread), min(1.0, value + spread)

    def _binary_counts(self) -> tuple[int, int]:
        """(successes, trials) of the positive class's recall, precision or u of f1."""
        k = self.config.positive
        tp, support, predicted = int(self._tp[k]), int(self._support[k]), int(self._predicted[k])
        if self.config.metric == "recall":
            return tp, support
        if self.config.metric == "precision":
            return tp, predicted
        return tp, support + predicted - tp

    def _macro(self, z: float) -> tuple[float, float]:
        """(macro average, z times its standard error) of recall, precision or f1."""
        seen = (self._support > 0) | (self._predicted > 0)
        classes = int(seen.sum())
        tp = self._tp[seen].astype(np.float64)
        metric = self.config.metric
        if metric == "f1":
            n = (self._support + self._predicted - self._tp)[seen].astype(np.float64)
        else:
            n = (self._support if metric == "recall" else self._predicted)[seen].astype(np.float64)
        safe = np.maximum(n, 1.0)
        u = np.where(n > 0, tp / safe, 0.0)
        smooth = (tp + 1) / (n + 2)
        var = np.where(n > 0, smooth * (1 - smooth) / safe, 0.0)
        if metric == "f1":
            values = 2 * u / (1 + u)
            var = var * (2 / (1 + smooth) ** 2) ** 2
        else:
            values = u
        return float(values.mean()), z * math.sqrt(float(var.sum())) / classes

    def view(self, metric: str) -> MetricTally:
        """The same counts read as another metric of the task (accuracy, recall,
        precision and f1 share their counts; so do mae and rmse). A snapshot for
        reading: it shares the arrays, so read it before more rows are added."""
        if metric not in METRICS[self.config.task]:
            raise ValueError(f"metric {metric!r} is not one of task {self.config.task!r}")
        other = MetricTally(replace(self.config, metric=metric), version=self.version,
                            class_cap=self._cap)
        other.rows, other.correct, other.nonfinite = self.rows, self.correct, self.nonfinite
        other._tp, other._support, other._predicted = self._tp, self._support, self._predicted
        other._abs, other._sq = self._abs, self._sq
        return other

    def describe(self) -> dict[str, object]:
        """Plain JSON figures: metric, value, rows, fixed-sample interval."""
        value = self.value
        low, high = self.interval()
        out: dict[str, object] = {
            "version": self.version, "metric": self.config.metric, "rows": self.rows,
            "value": None if value is None else round(value, 6),
            "interval": [round(low, 6), round(high, 6) if math.isfinite(high) else None]}
        if self.nonfinite:
            out["nonfinite"] = self.nonfinite
        return out


# -- two versions on the same rows -----------------------------------------------------

class PairedTally:
    """The rows both versions answered that got truth, joined row by row."""

    __slots__ = ("_abs_diff", "_mcnemar", "_sq_diff", "active", "b", "both_right", "both_wrong",
                 "c", "config", "previous", "rows")

    def __init__(self, config: QualityConfig, *, active_version: int = 0,
                 previous_version: int = 0, class_cap: int = CLASS_CAP) -> None:
        self.config = config
        self.rows = 0
        self.both_right = 0  # a
        self.b = 0  # previous right, active wrong
        self.c = 0  # previous wrong, active right
        self.both_wrong = 0  # d
        self.active = MetricTally(config, version=active_version, class_cap=class_cap)
        self.previous = MetricTally(config, version=previous_version, class_cap=class_cap)
        self._abs_diff = Moments()  # active |error| - previous |error|, per row
        self._sq_diff = Moments()  # the same with squared errors
        self._mcnemar: tuple[int, int, float] = (0, 0, 1.0)

    def add(self, active: Outcomes, previous: Outcomes) -> None:
        """One request's rows, as each version answered them against the same truth."""
        if active.rows != previous.rows:
            raise ValueError(f"paired outcomes need the same rows: {active.rows} against"
                             f" {previous.rows}")
        self.rows += active.rows
        self.active.add(active)
        self.previous.add(previous)
        if self.config.task == "regression":
            finite = np.isfinite(active.sq_error) & np.isfinite(previous.sq_error)
            if finite.all():
                self._abs_diff.add(active.abs_error - previous.abs_error)
                self._sq_diff.add(active.sq_error - previous.sq_error)
            else:
                self._abs_diff.add(active.abs_error[finite] - previous.abs_error[finite])
                self._sq_diff.add(active.sq_error[finite] - previous.sq_error[finite])
            return
        if active.rows == 1:
            new = bool(active.predicted[0] == active.actual[0])
            old = bool(previous.predicted[0] == previous.actual[0])
            if old == new:
                if new:
                    self.both_right += 1
                else:
                    self.both_wrong += 1
            elif old:
                self.b += 1
            else:
                self.c += 1
            return
        new_ok, old_ok = active.correct, previous.correct
        b = int((old_ok & ~new_ok).sum())
        c = int((new_ok & ~old_ok).sum())
        right = int((old_ok & new_ok).sum())
        self.b += b
        self.c += c
        self.both_right += right
        self.both_wrong += active.rows - b - c - right

    @property
    def samples(self) -> int:
        """Paired rows usable for the metric (regression: both errors finite)."""
        if self.config.task == "regression":
            return self._abs_diff.count
        return self.rows

    def mcnemar_p(self) -> float:
        """Exact one-sided McNemar p-value that the active version is less accurate
        (fixed-sample: valid for one look, reported for reading)."""
        b, c, p = self._mcnemar
        if (b, c) != (self.b, self.c):
            p = mcnemar_p(self.b, self.c)
            self._mcnemar = (self.b, self.c, p)
        return p

    def log_evalue(self, margin: float) -> float:
        """See `log_evalue`: against "active accuracy >= previous accuracy - margin"."""
        return log_evalue(self.both_right + self.both_wrong, self.b, self.c, margin)

    def difference(self, squared: bool = False) -> Moments:
        """Moments of the per-row error difference, active minus previous (regression)."""
        return self._sq_diff if squared else self._abs_diff

    def z_test(self, margin: float, squared: bool = False) -> tuple[float, float]:
        """(z, one-sided p) of the paired z-test of H0: mean error difference <= margin
        (fixed sample, for reading; a t-test would differ only below ~30 rows)."""
        diff = self.difference(squared)
        if diff.count == 0:
            return 0.0, 1.0
        se = math.sqrt(diff.variance / diff.count)
        if se == 0:
            return (math.inf, 0.0) if diff.mean > margin else (-math.inf, 1.0)
        z = (diff.mean - margin) / se
        return z, one_sided_p(z)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"rows": self.rows, "active": self.active.describe(),
                                  "previous": self.previous.describe()}
        if self.config.task == "regression":
            d = self.difference(self.config.metric == "rmse")
            out["difference"] = {"mean": d.mean, "sd": math.sqrt(d.variance), "rows": d.count}
        else:
            out.update(a=self.both_right, b=self.b, c=self.c, d=self.both_wrong)
        return out
