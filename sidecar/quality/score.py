"""One request's answer and its ground truth, turned into per-row outcomes.

`summarize` runs on the request path: it keeps a small copy of what a version
answered (never a reference to the output buffer):

- classification: the top-1 class per row (int64 [rows]) of a floating point
  output [rows, classes] (classes >= 2), or the labels themselves when the
  output is integer [rows] or [rows, 1]. A 1-wide float output is a score,
  not a classifier: use task "binary".
- binary: one score per row (float64 [rows]) from an output [rows] or
  [rows, 1], or the second column of a two-column output [rows, 2]
  (probability of class 1). The predicted label is score >= threshold.
- regression: the values, float64 [rows, width] (a copy: memory grows with
  the output's size).

`check_truth` validates the client's truth tensor for `rows` rows and returns
it normalised (labels int64 [rows], or float64 [rows, width]); `outcomes`
joins an answer with it. Both raise ValueError with the reason. A
non-finite prediction in regression yields a non-finite error: the tallies
count such rows apart and leave them out of the metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidecar.quality.config import QualityConfig

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_EMPTY_INT: IntArray = np.zeros(0, np.int64)
_EMPTY_FLOAT: FloatArray = np.zeros(0, np.float64)


@dataclass(slots=True, eq=False)
class Answer:
    """What one version answered for one request, in compact form. Not frozen, but
    never changed once made: a frozen dataclass's __init__ costs 1.5 us, and one
    is made per remembered request, on the request path."""

    #: classification: int64 labels [rows]; binary: float64 scores [rows];
    #: regression: float64 values [rows, width]
    values: npt.NDArray[np.int64] | npt.NDArray[np.float64]
    classes: int = 0  # classification: the output's class count (0 = unknown)

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def width(self) -> int:
        """Values per row (regression); 1 otherwise."""
        return int(self.values.shape[1]) if self.values.ndim == 2 else 1


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Per-row outcomes of one version on rows with truth."""

    predicted: IntArray  # classification/binary: predicted labels (else empty)
    actual: IntArray  # classification/binary: true labels (else empty)
    abs_error: FloatArray  # regression: mean |error| over each row's values (else empty)
    sq_error: FloatArray  # regression: mean squared error over each row's values

    @property
    def rows(self) -> int:
        return int(max(self.actual.shape[0], self.abs_error.shape[0]))

    @property
    def correct(self) -> BoolArray:
        return np.equal(self.predicted, self.actual)


def summarize(config: QualityConfig, output: np.ndarray) -> Answer:
    """The compact answer of one output tensor; ValueError if it does not fit the task."""
    task = config.task
    if task == "classification":
        kind = output.dtype.kind
        if kind in "iub" and (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
            return Answer(output.reshape(-1).astype(np.int64))
        if kind != "f" or output.ndim != 2:
            raise ValueError(f"a classification output must be float [rows, classes] or integer"
                             f" labels [rows], not {output.dtype} {list(output.shape)}")
        classes = output.shape[1]
        if classes < 2:
            raise ValueError("a 1-wide output is a score, not a classifier: use task 'binary'")
        return Answer(np.asarray(output.argmax(axis=1), dtype=np.int64), classes)
    if task == "binary":
        if output.dtype.kind not in "fiub":
            raise ValueError(f"a binary output must be numeric, not {output.dtype}")
        if output.ndim == 1:
            return Answer(output.astype(np.float64))
        if output.ndim == 2 and output.shape[1] in (1, 2):
            return Answer(output[:, -1].astype(np.float64))
        raise ValueError(f"a binary output must be [rows], [rows, 1] or [rows, 2],"
                         f" not {list(output.shape)}")
    if output.dtype.kind not in "fiub":
        raise ValueError(f"a regression output must be numeric, not {output.dtype}")
    if output.ndim == 0:
        raise ValueError("a regression output must have a row axis, not a scalar")
    return Answer(output.reshape(output.shape[0], -1).astype(np.float64))


def check_truth(config: QualityConfig, truth: np.ndarray, rows: int, *, classes: int = 0,
                width: int = 0) -> IntArray | FloatArray:
    """The truth for `rows` rows, normalised, or ValueError with the reason.

    classification: integer labels [rows] or [rows, 1] (floats holding whole
    numbers are accepted), or one-hot/probability rows [rows, classes] (their
    argmax); labels must be in [0, classes) when `classes` is known.
    binary: 0/1 or bool per row. regression: numbers [rows, ...] holding
    `width` values per row when `width` is known. Returns int64 [rows] labels
    or float64 [rows, width] values.
    """
    if truth.ndim == 0 or truth.shape[0] != rows:
        got = "a scalar" if truth.ndim == 0 else f"{truth.shape[0]} rows"
        raise ValueError(f"truth has {got}, the answer has {rows}")
    kind = truth.dtype.kind
    if config.task == "regression":
        if kind not in "fiu":
            raise ValueError(f"regression truth must be numbers, not {truth.dtype}")
        values = truth.reshape(rows, -1).astype(np.float64)
        if width and values.shape[1] != width:
            raise ValueError(f"truth has {values.shape[1]} values per row, the output {width}")
        if not np.isfinite(values).all():
            raise ValueError("regression truth must be finite")
        return values
    if kind not in "fiub":
        raise ValueError(f"{config.task} truth must be numbers or booleans, not {truth.dtype}")
    if truth.ndim == 2 and truth.shape[1] > 1:
        if config.task == "binary":
            raise ValueError(f"binary truth must be [rows] or [rows, 1], not {list(truth.shape)}")
        if kind != "f":
            raise ValueError(f"one-hot truth [rows, classes] must be floating point,"
                             f" not {truth.dtype}")
        if classes and truth.shape[1] != classes:
            raise ValueError(f"one-hot truth has {truth.shape[1]} classes, the output {classes}")
        if not np.isfinite(truth).all():
            raise ValueError("one-hot truth must be finite")
        picked: IntArray = np.asarray(truth.argmax(axis=1), dtype=np.int64)
        return picked
    if truth.ndim > 2:
        raise ValueError(f"truth must be [rows] or [rows, 1], not {list(truth.shape)}")
    flat = truth.reshape(rows)
    if kind == "f":
        if not (np.isfinite(flat).all() and (flat == np.round(flat)).all()):
            raise ValueError("floating point truth labels must be whole numbers")
    labels = flat.astype(np.int64)
    if config.task == "binary":
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError("binary truth must be 0 or 1 per row")
        return labels
    if rows and labels.min() < 0:
        raise ValueError(f"truth label {int(labels.min())} is negative")
    if classes and rows and labels.max() >= classes:
        raise ValueError(f"truth label {int(labels.max())} is out of range for"
                         f" {classes} classes")
    return labels


def outcomes(config: QualityConfig, answer: Answer, truth_rows: IntArray | FloatArray
             ) -> Outcomes:
    """Per-row outcomes of `answer` against truth from `check_truth`."""
    if truth_rows.shape[0] != answer.rows:
        raise ValueError(f"truth has {truth_rows.shape[0]} rows, the answer {answer.rows}")
    if config.task == "regression":
        if truth_rows.ndim != 2 or truth_rows.shape[1] != answer.width:
            raise ValueError(f"truth has {truth_rows.shape[1:]} values per row,"
                             f" the answer {answer.width}")
        diff = answer.values - truth_rows
        sq = diff * diff
        if diff.shape[1] == 1:
            return Outcomes(_EMPTY_INT, _EMPTY_INT, np.abs(diff[:, 0]), sq[:, 0])
        return Outcomes(_EMPTY_INT, _EMPTY_INT, np.abs(diff).mean(axis=1), sq.mean(axis=1))
    labels = truth_rows.astype(np.int64, copy=False)
    if config.task == "binary":
        predicted = (answer.values >= config.threshold).astype(np.int64)
    else:
        predicted = answer.values.astype(np.int64, copy=False)
    return Outcomes(predicted, labels, _EMPTY_FLOAT, _EMPTY_FLOAT)
