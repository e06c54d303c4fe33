"""Quality judging's pure parts: settings, scoring, tallies, the rule, the answer memory."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from sidecar.quality import (
    Answer,
    AnswerMemory,
    MetricTally,
    PairedTally,
    QualityConfig,
    check_truth,
    evidence_key,
    judge_quality,
    outcomes,
    parse_quality,
    summarize,
)
from sidecar.quality.stats import (
    Moments,
    binomial_half_upper_tail,
    log_evalue,
    mcnemar_p,
    normal_z,
    sequential_z,
    wilson,
)

CLS = parse_quality({})
BIN = parse_quality({"task": "binary"})
REG = parse_quality({"task": "regression"})


# -- config ----------------------------------------------------------------------------

def test_defaults_and_describe() -> None:
    """Defaults per task; describe() is plain JSON under the file's keys."""
    assert CLS == QualityConfig()
    assert (CLS.task, CLS.metric, CLS.min_samples, CLS.max_drop, CLS.floor, CLS.confidence,
            CLS.shadow_share) == ("classification", "accuracy", 200, 0.02, None, 0.95, 1.0)
    assert BIN.metric == "accuracy" and REG.metric == "mae"
    assert CLS.higher_is_better and not REG.higher_is_better
    assert not parse_quality({"task": "regression", "metric": "rmse"}).higher_is_better
    assert CLS.alpha == pytest.approx(0.05)
    config = parse_quality({"output": "probs", "task": "binary", "metric": "f1", "min": 0.6,
                            "threshold": 0.3, "positive": 0, "min_samples": 50.0})
    described = config.describe()
    assert json.loads(json.dumps(described)) == described
    assert described == {"output": "probs", "task": "binary", "metric": "f1", "min_samples": 50,
                         "max_drop": 0.02, "min": 0.6, "confidence": 0.95,
                         "shadow_share": 1.0, "threshold": 0.3, "positive": 0}
    assert "threshold" not in CLS.describe()
    assert parse_quality({"min": None}).floor is None


@pytest.mark.parametrize(("obj", "message"), [
    ([], "quality must be a JSON object, not an array"),
    ({"metrics": "accuracy"}, "quality: unknown key 'metrics' (known: output, task,"),
    ({"output": 3}, "quality.output must be a string, not a number"),
    ({"task": "ranking"}, "quality.task must be one of classification, binary, regression,"
                          " not 'ranking'"),
    ({"metric": "mae"}, "quality.metric 'mae' is not valid for task 'classification'"
                        " (valid: accuracy, recall, precision, f1)"),
    ({"task": "regression", "metric": "accuracy"},
     "quality.metric 'accuracy' is not valid for task 'regression' (valid: mae, rmse)"),
    ({"threshold": 0.4}, "quality.threshold applies to task 'binary' only, not 'classification'"),
    ({"task": "regression", "positive": 1}, "quality.positive applies to task 'binary' only"),
    ({"min_samples": 0}, "quality.min_samples must be between 1 and 1000000, not 0"),
    ({"min_samples": 2.5}, "quality.min_samples must be an integer, not a number (2.5)"),
    ({"min_samples": True}, "quality.min_samples must be an integer, not a boolean"),
    ({"min_samples": "200"}, "quality.min_samples must be an integer, not a string"),
    ({"max_drop": -0.01}, "quality.max_drop must not be negative, not -0.01"),
    ({"max_drop": 1}, "quality.max_drop must be below 1 for accuracy, not 1.0"),
    ({"max_drop": "0.1"}, "quality.max_drop must be a number, not a string ('0.1')"),
    ({"max_drop": float("nan")}, "quality.max_drop must be a finite number, not nan"),
    ({"min": 1.5}, "quality.min must be between 0 and 1 for accuracy, not 1.5"),
    ({"task": "regression", "min": -1}, "quality.min (the largest mae allowed) must not be"
                                        " negative, not -1.0"),
    ({"task": "binary", "positive": 2}, "quality.positive must be 0 or 1, not 2"),
    ({"task": "binary", "threshold": [0.5]}, "quality.threshold must be a number, not an array"),
    ({"confidence": 1}, "quality.confidence must be strictly between 0 and 1, not 1.0"),
    ({"confidence": 0}, "quality.confidence must be strictly between 0 and 1, not 0.0"),
    ({"shadow_share": 1.5}, "quality.shadow_share must be between 0 and 1, not 1.5"),
    ({"shadow_share": None}, "quality.shadow_share must be a number, not null"),
])
def test_parse_errors_name_the_key(obj: object, message: str) -> None:
    """Every wrong key or value is refused with a message naming it."""
    with pytest.raises(ValueError) as caught:
        parse_quality(obj)
    assert str(caught.value).startswith(message)


def test_regression_max_drop_is_in_target_units() -> None:
    """Regression margins are not proportions: above 1 is fine."""
    assert parse_quality({"task": "regression", "max_drop": 2.5, "min": 10}).max_drop == 2.5


# -- score -----------------------------------------------------------------------------

def test_summarize_classification() -> None:
    """Top-1 class per row, a compact int64 copy; integer labels pass through."""
    output = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    answer = summarize(CLS, output)
    assert answer.values.dtype == np.int64 and answer.values.tolist() == [1, 0]
    assert (answer.classes, answer.rows) == (3, 2)
    assert not np.shares_memory(answer.values, output)
    labels = summarize(CLS, np.array([[2], [0]], np.int64))
    assert labels.values.tolist() == [2, 0] and labels.classes == 0


@pytest.mark.parametrize(("output", "message"), [
    (np.zeros((3, 1), np.float32), "a 1-wide output is a score, not a classifier"),
    (np.zeros(4, np.float32), "a classification output must be float [rows, classes]"),
    (np.zeros((2, 3, 4), np.float32), "a classification output must be float"),
    (np.array([b"a"], dtype=object), "a classification output must be float"),
])
def test_summarize_refuses_non_classifiers(output: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        summarize(CLS, output)


def test_summarize_binary_and_regression() -> None:
    """Binary: a score per row ([rows], [rows, 1], or column 1 of [rows, 2]);
    regression: float64 rows, copied."""
    assert summarize(BIN, np.array([0.2, 0.9], np.float32)).values.tolist() == \
        pytest.approx([0.2, 0.9])
    assert summarize(BIN, np.array([[0.7], [0.1]])).values.tolist() == [0.7, 0.1]
    assert summarize(BIN, np.array([[0.3, 0.7], [0.8, 0.2]])).values.tolist() == [0.7, 0.2]
    with pytest.raises(ValueError, match="binary output must be"):
        summarize(BIN, np.zeros((2, 3)))
    output = np.arange(6, dtype=np.float64).reshape(2, 3)
    answer = summarize(REG, output)
    assert answer.values.shape == (2, 3) and answer.width == 3
    assert not np.shares_memory(answer.values, output)
    assert summarize(REG, np.array([1.5, 2.5], np.float32)).values.shape == (2, 1)
    with pytest.raises(ValueError, match="must have a row axis"):
        summarize(REG, np.array(1.0))


def test_check_truth_classification() -> None:
    """Labels [rows] or [rows, 1], whole floats, or one-hot rows (their argmax)."""
    assert check_truth(CLS, np.array([2, 0, 1]), 3, classes=3).tolist() == [2, 0, 1]
    assert check_truth(CLS, np.array([[1], [0]], np.int32), 2).tolist() == [1, 0]
    assert check_truth(CLS, np.array([1.0, 2.0], np.float32), 2).tolist() == [1, 2]
    one_hot = np.array([[0, 0, 1], [0.1, 0.8, 0.1]], np.float32)
    labels = check_truth(CLS, one_hot, 2, classes=3)
    assert labels.dtype == np.int64 and labels.tolist() == [2, 1]


@pytest.mark.parametrize(("truth", "rows", "classes", "message"), [
    (np.array([1, 2]), 3, 0, "truth has 2 rows, the answer has 3"),
    (np.array(1), 1, 0, "truth has a scalar, the answer has 1"),
    (np.array(["a", "b"]), 2, 0, "classification truth must be numbers or booleans, not <U1"),
    (np.array([1.5, 2.0]), 2, 0, "floating point truth labels must be whole numbers"),
    (np.array([1.0, np.nan]), 2, 0, "floating point truth labels must be whole numbers"),
    (np.array([0, 3]), 2, 3, "truth label 3 is out of range for 3 classes"),
    (np.array([-1, 0]), 2, 3, "truth label -1 is negative"),
    (np.array([[0, 1, 0, 0]], np.float32), 1, 3, "one-hot truth has 4 classes, the output 3"),
    (np.array([[0, 1, 0]], np.int64), 1, 3, "one-hot truth [rows, classes] must be floating"),
    (np.zeros((2, 1, 1), np.int64), 2, 0, "truth must be [rows] or [rows, 1]"),
])
def test_check_truth_refuses_malformed(truth: np.ndarray, rows: int, classes: int,
                                       message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_truth(CLS, truth, rows, classes=classes)
    assert str(caught.value).startswith(message)


def test_check_truth_binary_and_regression() -> None:
    assert check_truth(BIN, np.array([True, False]), 2).tolist() == [1, 0]
    assert check_truth(BIN, np.array([[1.0], [0.0]]), 2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="binary truth must be 0 or 1 per row"):
        check_truth(BIN, np.array([0, 2]), 2)
    with pytest.raises(ValueError, match=r"binary truth must be \[rows\] or \[rows, 1\]"):
        check_truth(BIN, np.zeros((2, 2)), 2)
    values = check_truth(REG, np.array([[1, 2], [3, 4]], np.int32), 2, width=2)
    assert values.dtype == np.float64 and values.shape == (2, 2)
    assert check_truth(REG, np.array([1.0, 2.0]), 2).shape == (2, 1)
    with pytest.raises(ValueError, match="truth has 3 values per row, the output 2"):
        check_truth(REG, np.zeros((2, 3)), 2, width=2)
    with pytest.raises(ValueError, match="regression truth must be finite"):
        check_truth(REG, np.array([1.0, np.inf]), 2)
    with pytest.raises(ValueError, match="regression truth must be numbers"):
        check_truth(REG, np.array([True]), 1)


def test_outcomes_per_task() -> None:
    """Predicted and true labels (binary: score >= threshold); per-row mean errors."""
    answer = summarize(CLS, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    got = outcomes(CLS, answer, check_truth(CLS, np.array([0, 0, 0]), 3, classes=2))
    assert got.predicted.tolist() == [0, 1, 0] and got.correct.tolist() == [True, False, True]
    assert got.rows == 3
    scores = summarize(BIN, np.array([0.5, 0.49, 0.9]))
    got = outcomes(BIN, scores, check_truth(BIN, np.array([1, 1, 0]), 3))
    assert got.predicted.tolist() == [1, 0, 1] and got.correct.tolist() == [True, False, False]
    strict = parse_quality({"task": "binary", "threshold": 0.95})
    assert outcomes(strict, scores, np.array([1, 1, 0])).predicted.tolist() == [0, 0, 0]
    values = summarize(REG, np.array([[1.0, 2.0], [0.0, 0.0]]))
    got = outcomes(REG, values, check_truth(REG, np.array([[2.0, 0.0], [0.0, 0.0]]), 2))
    assert got.abs_error.tolist() == [1.5, 0.0] and got.sq_error.tolist() == [2.5, 0.0]
    assert got.rows == 2
    with pytest.raises(ValueError, match="truth has 1 rows, the answer 2"):
        outcomes(REG, values, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="values per row"):
        outcomes(REG, values, np.zeros((2, 3)))


# -- stats: the formulas ---------------------------------------------------------------

def test_wilson_matches_the_spec() -> None:
    """45/50 at 95 %: [0.786, 0.957]; it stays in [0, 1] at the edges."""
    low, high = wilson(45, 50, normal_z(0.95))
    assert (round(low, 3), round(high, 3)) == (0.786, 0.957)
    assert wilson(0, 10, 1.96)[0] == 0.0 and wilson(10, 10, 1.96)[1] == 1.0
    assert wilson(0, 0, 1.96) == (0.0, 1.0)


def test_mcnemar_exact_matches_the_spec() -> None:
    """b = 9, c = 2: one-sided 0.0327 (two-sided 0.0654)."""
    assert mcnemar_p(9, 2) == pytest.approx(0.0327, abs=5e-5)
    assert 2 * mcnemar_p(9, 2) == pytest.approx(0.0654, abs=5e-5)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(2, 9) > 0.99


def test_binomial_tail_exact_and_stable() -> None:
    """Equal to the exact sum for small n; finite and normal-like at n = 10^6."""
    for n in (1, 2, 7, 30, 61):
        for k in range(n + 2):
            exact = Fraction(sum(math.comb(n, i) for i in range(k, n + 1)), 2 ** n)
            assert binomial_half_upper_tail(n, k) == pytest.approx(float(exact), rel=1e-9)
    n = 10 ** 6
    assert binomial_half_upper_tail(n, n // 2 + 1000) == pytest.approx(0.02275, rel=0.01)
    assert binomial_half_upper_tail(n, n // 2 - 1000) == pytest.approx(1 - 0.02275, rel=1e-3)
    far = binomial_half_upper_tail(n, 600_000)
    assert 0.0 <= far < 1e-300


def test_sequential_z_is_wider_than_fixed_and_grows_slowly() -> None:
    """The time-uniform z: about 3.0 near min_samples for alpha 0.05, sqrt(log n) after."""
    assert sequential_z(200, 0.05, 200) == pytest.approx(3.035, abs=1e-3)
    assert sequential_z(200, 0.05, 200) > normal_z(0.95)
    assert 3.6 < sequential_z(100_000, 0.05, 200) < 4.0
    assert sequential_z(0, 0.05, 200) == math.inf


def test_moments_merge_batches() -> None:
    """Batches and single values give numpy's mean and sample variance."""
    rng = np.random.default_rng(3)
    data = rng.normal(5, 2, 1000)
    m = Moments()
    m.add(data[:1])
    m.add(data[1:400])
    for x in data[400:410]:
        m.add(np.array([x]))
    m.add(data[410:])
    assert m.count == 1000
    assert m.mean == pytest.approx(data.mean()) and m.variance == pytest.approx(data.var(ddof=1))


def test_log_evalue() -> None:
    """With no margin only discordant pairs count; evidence grows with b, shrinks with c."""
    assert log_evalue(0, 9, 2, 0.0) == pytest.approx(log_evalue(10_000, 9, 2, 0.0))
    assert log_evalue(1000, 20, 20, 0.02) < 0 < log_evalue(1000, 60, 10, 0.02)
    assert log_evalue(0, 0, 0, 0.02) == pytest.approx(0.0)


# -- stats: tallies --------------------------------------------------------------------

def _add(tally: MetricTally, config: QualityConfig, predicted: list[int], actual: list[int],
         batch: int) -> None:
    for i in range(0, len(actual), batch):
        tally.add(outcomes(config, Answer(np.array(predicted[i:i + batch], np.int64)),
                           np.array(actual[i:i + batch], np.int64)))


def _macro(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """scikit-learn's macro averages (zero_division=0), by hand."""
    labels = np.union1d(predicted, actual)
    recall, precision, f1 = [], [], []
    for k in labels:
        tp = float(((predicted == k) & (actual == k)).sum())
        support, guessed = float((actual == k).sum()), float((predicted == k).sum())
        recall.append(tp / support if support else 0.0)
        precision.append(tp / guessed if guessed else 0.0)
        f1.append(2 * tp / (support + guessed))
    return {"recall": float(np.mean(recall)), "precision": float(np.mean(precision)),
            "f1": float(np.mean(f1))}


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_tally_classification_metrics(batch: int) -> None:
    """Accuracy and macro recall/precision/f1 equal the definitions, row by row or in batches."""
    rng = np.random.default_rng(5)
    actual = rng.integers(0, 5, 500)
    predicted = np.where(rng.random(500) < 0.7, actual, rng.integers(0, 6, 500))
    expected = _macro(predicted, actual)
    for metric in ("accuracy", "recall", "precision", "f1"):
        config = parse_quality({"metric": metric})
        tally = MetricTally(config)
        _add(tally, config, predicted.tolist(), actual.tolist(), batch)
        want = float((predicted == actual).mean()) if metric == "accuracy" else expected[metric]
        assert tally.rows == 500 and tally.value == pytest.approx(want)
        low, high = tally.interval()
        seq_low, seq_high = tally.sequential_interval()
        assert 0 <= seq_low < low < want < high < seq_high <= 1


def test_tally_binary_metrics() -> None:
    """Positive-class recall, precision and f1 (f1's interval through Jaccard's u)."""
    predicted = [1, 1, 1, 0, 0, 0, 1, 0]
    actual = [1, 1, 0, 1, 0, 0, 1, 1]  # tp 3, fp 1, fn 2
    want = {"accuracy": 5 / 8, "recall": 3 / 5, "precision": 3 / 4, "f1": 6 / 9}
    for metric, value in want.items():
        config = parse_quality({"task": "binary", "metric": metric})
        tally = MetricTally(config)
        _add(tally, config, predicted, actual, 3)
        assert tally.value == pytest.approx(value)
        low, high = tally.interval()
        assert low < value < high
    negative = parse_quality({"task": "binary", "metric": "recall", "positive": 0})
    tally = MetricTally(negative)
    _add(tally, negative, predicted, actual, 8)
    assert tally.value == pytest.approx(2 / 3)  # class 0: tp 2 of support 3
    z = normal_z(0.95)
    f1 = MetricTally(parse_quality({"task": "binary", "metric": "f1"}))
    _add(f1, f1.config, predicted, actual, 8)
    u_low, u_high = wilson(3, 6, z)
    assert f1.interval() == pytest.approx((2 * u_low / (1 + u_low), 2 * u_high / (1 + u_high)))


def test_tally_lumps_classes_beyond_the_cap() -> None:
    """Memory is bounded by the class cap; accuracy stays exact."""
    config = parse_quality({"metric": "recall"})
    tally = MetricTally(config, class_cap=10)
    _add(tally, config, [50, 60, 3, -1], [50, 70, 3, 4], 4)
    _add(tally, config, [1234], [1234], 1)
    assert tally._tp.shape[0] == 11  # 10 classes and the lump
    assert tally.correct == 3 and tally.rows == 5
    # classes 3 (1/1), 4 (0/1), lump (2/3): macro recall over the classes seen in truth
    # or predictions: 3, 4 and the lump (the -1 prediction lands there too)
    assert tally.value == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_tally_regression() -> None:
    """mae and rmse over rows, normal intervals; non-finite predictions counted apart."""
    rng = np.random.default_rng(7)
    errors = rng.normal(0, 2, 4000)
    for metric in ("mae", "rmse"):
        config = parse_quality({"task": "regression", "metric": metric})
        tally = MetricTally(config)
        for chunk in np.array_split(errors, 40):
            tally.add(outcomes(config, Answer(chunk[:, None].copy()),
                               np.zeros((chunk.shape[0], 1))))
        tally.add(outcomes(config, Answer(np.array([[np.nan]])), np.zeros((1, 1))))
        want = np.abs(errors).mean() if metric == "mae" else math.sqrt((errors ** 2).mean())
        assert tally.value == pytest.approx(want) and tally.rows == 4000
        assert tally.nonfinite == 1
        low, high = tally.interval()
        true = 2 * math.sqrt(2 / math.pi) if metric == "mae" else 2.0
        assert low < true < high and high - low < 0.2
        assert tally.describe()["nonfinite"] == 1


def test_paired_tally_counts() -> None:
    """a, b, c, d of the McNemar table, the same by rows or by batches."""
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 3, 300)
    new = np.where(rng.random(300) < 0.8, truth, (truth + 1) % 3)
    old = np.where(rng.random(300) < 0.8, truth, (truth + 2) % 3)
    tallies = []
    for batch in (1, 300, 17):
        paired = PairedTally(CLS, active_version=2, previous_version=1)
        for i in range(0, 300, batch):
            t = truth[i:i + batch]
            paired.add(outcomes(CLS, Answer(new[i:i + batch]), t),
                       outcomes(CLS, Answer(old[i:i + batch]), t))
        tallies.append((paired.both_right, paired.b, paired.c, paired.both_wrong, paired.rows))
    a, b, c, d, rows = tallies[0]
    assert tallies[1] == tallies[2] == tallies[0] and a + b + c + d == rows == 300
    assert b == int(((old == truth) & (new != truth)).sum())
    assert c == int(((old != truth) & (new == truth)).sum())
    assert paired.mcnemar_p() == pytest.approx(mcnemar_p(b, c))
    with pytest.raises(ValueError, match="same rows"):
        paired.add(outcomes(CLS, Answer(new[:2]), truth[:2]),
                   outcomes(CLS, Answer(old[:3]), truth[:3]))


# -- judge -----------------------------------------------------------------------------

class Server:
    """Feedback handled as the server would: remember both versions' answers, take
    them when truth comes, tally, and judge at every look."""

    def __init__(self, config: QualityConfig, active: int = 3, previous: int = 2) -> None:
        self.config = config
        self.versions = (active, previous)
        self.memory = AnswerMemory()
        self.paired = PairedTally(config, active_version=active, previous_version=previous)
        self.active = MetricTally(config, version=active)
        self.previous = MetricTally(config, version=previous)
        self.looks = 0

    def feedback(self, rid: str, new: np.ndarray, old: np.ndarray, truth: np.ndarray) -> bool:
        """Whether the judge fires at this look."""
        active, previous = self.versions
        self.memory.remember("m", rid, active, summarize(self.config, new))
        self.memory.remember("m", rid, previous, summarize(self.config, old))
        answers = self.memory.take("m", rid)
        assert answers is not None
        first = answers[active]
        rows = check_truth(self.config, truth, first.rows, classes=first.classes,
                           width=first.width)
        got_new = outcomes(self.config, first, rows)
        got_old = outcomes(self.config, answers[previous], rows)
        self.active.add(got_new)
        self.previous.add(got_old)
        self.paired.add(got_new, got_old)
        self.looks += 1
        self.verdict = judge_quality(self.config, self.paired, self.active, self.previous)
        return self.verdict.fire


def _one_hot(labels: np.ndarray, classes: int = 4) -> np.ndarray:
    out = np.full((labels.shape[0], classes), 0.1, np.float32)
    out[np.arange(labels.shape[0]), labels] = 0.7
    return out


def _classifier_stream(rng: np.random.Generator, n: int, accuracy: float,
                       broken_class: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """(truth, previous version's outputs, active version's outputs): 4 balanced classes,
    each version right with probability `accuracy`, errors independent; the active one
    always wrong on `broken_class`."""
    truth = rng.integers(0, 4, n)
    old = np.where(rng.random(n) < accuracy, truth, (truth + rng.integers(1, 4, n)) % 4)
    new = np.where(rng.random(n) < accuracy, truth, (truth + rng.integers(1, 4, n)) % 4)
    if broken_class is not None:
        new = np.where(truth == broken_class, (truth + 1) % 4, new)
    return truth, _one_hot(old), _one_hot(new)


def test_equal_version_never_fires_over_100k_looks() -> None:
    """A version as accurate as its predecessor (independent errors, 90 %), judged after
    every one of 10^5 feedback items, is never rolled back."""
    server = Server(CLS)
    truth, old, new = _classifier_stream(np.random.default_rng(2024), 100_000, 0.9)
    fired = [i for i in range(100_000)
             if server.feedback(f"r{i}", new[i:i + 1], old[i:i + 1], truth[i:i + 1])]
    assert fired == [] and server.looks == 100_000 and server.paired.rows == 100_000
    assert server.verdict.reason.startswith("accuracy 0.")
    assert "not shown worse by more than 0.02" in server.verdict.reason
    assert len(server.memory) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_version_wrong_on_one_class_fires_within_a_few_hundred(seed: int) -> None:
    """Always wrong on one class of 4 (about 0.22 of accuracy lost): rolled back after
    min_samples and well before 600 items, with the figures as evidence."""
    server = Server(CLS)
    truth, old, new = _classifier_stream(np.random.default_rng(seed), 2000, 0.9, 0)
    at = next(i + 1 for i in range(2000)
              if server.feedback(f"r{i}", new[i:i + 1], old[i:i + 1], truth[i:i + 1]))
    assert CLS.min_samples <= at < 600
    verdict = server.verdict
    assert verdict.rule == "quality-drop"
    assert "worse by more than 0.02" in verdict.reason and "(version 3)" in verdict.reason
    evidence = verdict.evidence
    assert json.loads(json.dumps(evidence)) == evidence
    drop = evidence["drop"]
    assert drop["rows"] == at and drop["e_value"] >= 20 and drop["mcnemar_p"] < 0.01
    assert drop["b"] > drop["c"] and drop["active"] < drop["previous"]
    assert evidence["active"]["version"] == 3 and evidence["previous"]["version"] == 2
    assert evidence_key(verdict) == f"quality-drop/accuracy/3-2/{1 << (at.bit_length() - 1)}"


def test_nothing_is_judged_before_min_samples() -> None:
    """Even a version wrong on every row waits for min_samples paired rows."""
    config = parse_quality({"min_samples": 50})
    server = Server(config)
    truth = np.zeros(1, np.int64)
    for i in range(49):
        assert not server.feedback(f"r{i}", _one_hot(np.array([1])), _one_hot(truth), truth)
    assert server.verdict.reason == "accuracy: 49 of 50 paired rows"
    assert server.feedback("r49", _one_hot(np.array([1])), _one_hot(truth), truth)


def test_batches_of_rows_count_as_rows() -> None:
    """One feedback may cover a batch: min_samples counts rows, not items."""
    server = Server(parse_quality({"min_samples": 64}))
    truth = np.random.default_rng(4).integers(0, 4, 64)
    old, new = _one_hot(truth), _one_hot((truth + 1) % 4)
    assert not server.feedback("a", new[:32], old[:32], truth[:32])
    assert server.feedback("b", new[32:], old[32:], truth[32:])
    assert server.paired.rows == 64


def test_macro_recall_drop_fires_on_per_version_intervals() -> None:
    """recall (macro): the per-version confidence sequences on the paired rows separate."""
    config = parse_quality({"metric": "recall"})
    server = Server(config)
    truth, old, new = _classifier_stream(np.random.default_rng(11), 3000, 0.95, 2)
    at = next((i + 1 for i in range(3000)
               if server.feedback(f"r{i}", new[i:i + 1], old[i:i + 1], truth[i:i + 1])), None)
    assert at is not None and at < 1500
    drop = server.verdict.evidence["drop"]
    assert drop["previous_low"] - drop["active_high"] > 0.02


def test_equal_versions_do_not_fire_on_macro_f1() -> None:
    server = Server(parse_quality({"metric": "f1"}))
    truth, old, new = _classifier_stream(np.random.default_rng(12), 5000, 0.8)
    assert not any(server.feedback(f"r{i}", new[i:i + 1], old[i:i + 1], truth[i:i + 1])
                   for i in range(5000))


def test_floor_rule() -> None:
    """Below the floor with confidence: fires, unless the previous version is no better."""
    config = parse_quality({"min": 0.8, "min_samples": 100})
    rng = np.random.default_rng(13)
    truth = rng.integers(0, 4, 400)
    new = np.where(rng.random(400) < 0.6, truth, (truth + 1) % 4)
    active = MetricTally(config, version=5)
    _add(active, config, new.tolist(), truth.tolist(), 400)
    paired = PairedTally(config)
    verdict = judge_quality(config, paired, active, None)
    assert verdict.fire and verdict.rule == "quality-floor"
    assert "is below the floor 0.8" in verdict.reason and "400 rows" in verdict.reason
    assert verdict.evidence["floor"]["sequential_interval"][1] < 0.8
    assert evidence_key(verdict) == "quality-floor/accuracy/5-0/256"
    worse = MetricTally(config, version=4)
    _add(worse, config, [(t + 1) % 4 for t in truth.tolist()], truth.tolist(), 400)
    held = judge_quality(config, paired, active, worse)
    assert not held.fire and "but version 4 is no better (0)" in held.reason
    good = MetricTally(config, version=4)
    _add(good, config, truth.tolist(), truth.tolist(), 400)
    assert judge_quality(config, paired, active, good).fire
    fine = MetricTally(config, version=5)
    _add(fine, config, truth.tolist(), truth.tolist(), 400)
    assert not judge_quality(config, paired, fine, None).fire
    few = MetricTally(config)
    _add(few, config, new[:99].tolist(), truth[:99].tolist(), 99)
    assert "floor: 99 of 100 rows" in judge_quality(config, paired, few, None).reason


def test_floor_on_error_is_a_ceiling() -> None:
    """For mae, "min" is the largest error allowed."""
    config = parse_quality({"task": "regression", "min": 0.5, "min_samples": 100})
    rng = np.random.default_rng(14)
    active = MetricTally(config)
    active.add(outcomes(config, Answer(rng.normal(0, 1.0, (300, 1))), np.zeros((300, 1))))
    verdict = judge_quality(config, PairedTally(config), active)
    assert verdict.fire and "is above the floor 0.5" in verdict.reason


def _regression_run(config: QualityConfig, seed: int, n: int, new_sd: float) -> int | None:
    server = Server(config)
    rng = np.random.default_rng(seed)
    truth = rng.normal(10, 3, (n, 1))
    old = truth + rng.normal(0, 1.0, (n, 1))
    new = truth + rng.normal(0, new_sd, (n, 1))
    return next((i + 1 for i in range(n)
                 if server.feedback(f"r{i}", new[i:i + 1], old[i:i + 1], truth[i:i + 1])),
                None)


def test_regression_mae_and_rmse() -> None:
    """Paired error differences: 1.5x the error fires at min_samples; equal errors never."""
    for metric in ("mae", "rmse"):
        config = parse_quality({"task": "regression", "metric": metric, "max_drop": 0.05})
        at = _regression_run(config, 15, 1000, 1.5)
        assert at is not None and config.min_samples <= at < 400
        assert _regression_run(config, 16, 5000, 1.0) is None
    config = parse_quality({"task": "regression", "max_drop": 0.05})
    server = Server(config)
    truth = np.zeros((300, 1))
    for i in range(300):
        server.feedback(f"r{i}", truth[i:i + 1] + 2.0, truth[i:i + 1] + 1.0, truth[i:i + 1])
    drop = server.verdict.evidence["drop"]
    assert server.verdict.fire and drop["difference"] == 1.0 and drop["z_test_p"] == 0.0
    assert server.paired.z_test(0.05) == (math.inf, 0.0)
    rng = np.random.default_rng(17)
    paired = PairedTally(config)
    paired.add(outcomes(config, Answer(rng.normal(0, 1.2, (400, 1))), np.zeros((400, 1))),
               outcomes(config, Answer(rng.normal(0, 1.0, (400, 1))), np.zeros((400, 1))))
    diff = paired.difference()
    z, p = paired.z_test(0.05)
    assert z == pytest.approx((diff.mean - 0.05) / math.sqrt(diff.variance / 400))
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert PairedTally(config).z_test(0.0) == (0.0, 1.0)


def test_evidence_key_is_stable_until_rows_double() -> None:
    config = parse_quality({"min_samples": 10})
    paired = PairedTally(config, active_version=7, previous_version=6)
    keys = []
    for n in range(1, 40):
        paired.add(outcomes(config, Answer(np.array([1])), np.array([0])),
                   outcomes(config, Answer(np.array([0])), np.array([0])))
        verdict = judge_quality(config, paired, paired.active, paired.previous)
        if verdict.fire:
            keys.append((n, evidence_key(verdict)))
    assert keys and {k for n, k in keys if 16 <= n < 32} == {"quality-drop/accuracy/7-6/16"}
    assert {k for n, k in keys if n >= 32} == {"quality-drop/accuracy/7-6/32"}


# -- memory ----------------------------------------------------------------------------

A1 = Answer(np.array([1], np.int64), 4)
A2 = Answer(np.array([2], np.int64), 4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_takes_once_with_every_version() -> None:
    memory = AnswerMemory(clock=Clock())
    memory.remember("m", "r1", 3, A1)
    memory.remember("m", "r1", 2, A2)
    memory.remember("m", "r1", 3, A2)  # a version's first answer is kept
    memory.remember("m", "", 3, A1)  # no id: nothing to join truth to
    assert len(memory) == 1 and memory.held() == {"m": 1}
    assert memory.take("other", "r1") is None
    assert memory.take("m", "r1") == {3: A1, 2: A2}
    assert memory.take("m", "r1") is None  # a second feedback is unmatched
    assert memory.take("m", "") is None
    counts = memory.counts("m")
    assert (counts.held, counts.remembered, counts.taken, counts.missed) == (0, 1, 1, 1)


def test_memory_evicts_by_count_per_model() -> None:
    memory = AnswerMemory(max_ids=3, clock=Clock())
    for i in range(5):
        memory.remember("m", f"r{i}", 1, A1)
    memory.remember("n", "r0", 1, A1)
    assert memory.held() == {"m": 3, "n": 1}
    assert memory.take("m", "r1") is None and memory.take("m", "r2") == {1: A1}
    assert memory.counts("m").evicted == 2
    memory.remember("m", "r2", 1, A2)  # the id comes back: a new entry...
    for i in range(5, 7):
        memory.remember("m", f"r{i}", 1, A1)  # ...that the old slot's eviction spares
    assert memory.take("m", "r2") == {1: A2}
    memory.forget("m")
    assert memory.held() == {"n": 1} and memory.counts("m").held == 0


def test_memory_evicts_by_age() -> None:
    clock = Clock()
    memory = AnswerMemory(max_age_s=10, clock=clock)
    memory.remember("m", "old", 1, A1)
    clock.now += 6
    memory.remember("m", "young", 1, A1)
    clock.now += 5  # old is 11 s old, young 5 s
    memory.remember("m", "old", 2, A2)  # too late to join: a fresh entry
    assert memory.take("m", "old") == {2: A2}
    assert memory.take("m", "young") == {1: A1}
    memory.remember("m", "late", 1, A1)
    clock.now += 10.5
    assert memory.take("m", "late") is None  # expired, though not yet evicted
    memory.remember("m", "x", 1, A1)
    clock.now += 20
    assert memory.counts("m").held == 0  # counts() drops the expired first
    assert memory.counts("m").evicted == 3
    with pytest.raises(ValueError):
        AnswerMemory(max_ids=0)
