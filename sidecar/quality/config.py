"""A model's quality settings: the "quality" object of its sidecar.json.

    {"quality": {"output": "probabilities", "task": "classification",
                 "metric": "accuracy", "min_samples": 200, "max_drop": 0.02}}

The object's presence turns quality judging on for the model; `parse_quality`
checks every key and value and raises ValueError naming the key. Defaults, and
why:

- output "": the model's first output (name it when the model has several).
- task "classification": the common case (an output [rows, classes] whose
  argmax is the answer, or integer labels). "binary": one score per row
  (positive when >= `threshold`) against 0/1 truth; "regression": values.
- metric: "accuracy" for classification and binary, "mae" for regression.
  recall, precision and f1 are macro-averaged over classes for
  classification and of the `positive` class for binary.
- min_samples 200: rows with ground truth needed before anything is judged
  (paired rows for the drop rule, the active version's rows for the floor).
  Below a few hundred rows only a gross drop is detectable anyway.
- max_drop 0.02: the tolerated loss (the non-inferiority margin): a version
  is rolled back only when it is confidently worse than the previous one by
  more than this. In the metric's units: a proportion for accuracy, recall,
  precision and f1; the target's units for mae and rmse (set it there).
- min (none): an absolute floor; for mae and rmse, the largest error allowed
  (a ceiling on the error).
- threshold 0.5, positive 1: binary only.
- confidence 0.95: each rule's probability of ever firing wrongly, over
  unlimited looks, is at most 1 - confidence (see judge.py).
- shadow_share 1.0: the share of the active version's requests mirrored to
  the warm previous version so both answer the same rows (the paired
  comparison). Lower it to save the previous version's compute; detection
  then needs proportionally more feedback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

TASKS = ("classification", "binary", "regression")
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "recall", "precision", "f1"),
    "binary": ("accuracy", "recall", "precision", "f1"),
    "regression": ("mae", "rmse"),
}
DEFAULT_METRIC = {"classification": "accuracy", "binary": "accuracy", "regression": "mae"}
KEYS = ("output", "task", "metric", "min_samples", "max_drop", "min", "threshold", "positive",
        "confidence", "shadow_share")
_BINARY_ONLY = ("threshold", "positive")
_MAX_SAMPLES = 1_000_000  # a min_samples above this is a mistake


@dataclass(frozen=True, slots=True)
class QualityConfig:
    output: str = ""  # "" = the model's first output
    task: str = "classification"
    metric: str = "accuracy"
    min_samples: int = 200
    max_drop: float = 0.02
    floor: float | None = None  # the "min" key
    threshold: float = 0.5
    positive: int = 1
    confidence: float = 0.95
    shadow_share: float = 1.0

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in ("mae", "rmse")

    @property
    def alpha(self) -> float:
        """The false-alarm budget of each rule: 1 - confidence."""
        return 1.0 - self.confidence

    def describe(self) -> dict[str, Any]:
        """The settings as plain JSON values, under the sidecar.json keys."""
        out: dict[str, Any] = {"output": self.output, "task": self.task, "metric": self.metric,
                               "min_samples": self.min_samples, "max_drop": self.max_drop,
                               "min": self.floor, "confidence": self.confidence,
                               "shadow_share": self.shadow_share}
        if self.task == "binary":
            out["threshold"] = self.threshold
            out["positive"] = self.positive
        return out


def parse_quality(obj: object) -> QualityConfig:
    """The QualityConfig of a sidecar.json "quality" object; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"quality must be a JSON object, not {_kind(obj)}")
    for key in obj:
        if key not in KEYS:
            raise ValueError(f"quality: unknown key {key!r} (known: {', '.join(KEYS)})")
    output = _string(obj, "output", "")
    task = _string(obj, "task", "classification")
    if task not in TASKS:
        raise ValueError(f"quality.task must be one of {', '.join(TASKS)}, not {task!r}")
    metric = _string(obj, "metric", DEFAULT_METRIC[task])
    if metric not in METRICS[task]:
        raise ValueError(f"quality.metric {metric!r} is not valid for task {task!r}"
                         f" (valid: {', '.join(METRICS[task])})")
    if task != "binary":
        for key in _BINARY_ONLY:
            if key in obj:
                raise ValueError(f"quality.{key} applies to task 'binary' only, not {task!r}")
    min_samples = _integer(obj, "min_samples", 200)
    if not 1 <= min_samples <= _MAX_SAMPLES:
        raise ValueError(f"quality.min_samples must be between 1 and {_MAX_SAMPLES},"
                         f" not {min_samples}")
    max_drop = _number(obj, "max_drop", 0.02)
    if max_drop < 0:
        raise ValueError(f"quality.max_drop must not be negative, not {max_drop}")
    proportion = task != "regression"
    if proportion and max_drop >= 1:
        raise ValueError(f"quality.max_drop must be below 1 for {metric}, not {max_drop}")
    floor: float | None = None
    if obj.get("min") is not None:
        floor = _number(obj, "min", 0.0)
        if proportion and not 0 <= floor <= 1:
            raise ValueError(f"quality.min must be between 0 and 1 for {metric}, not {floor}")
        if not proportion and floor < 0:
            raise ValueError(f"quality.min (the largest {metric} allowed) must not be"
                             f" negative, not {floor}")
    threshold = _number(obj, "threshold", 0.5)
    positive = _integer(obj, "positive", 1)
    if positive not in (0, 1):
        raise ValueError(f"quality.positive must be 0 or 1, not {positive}")
    confidence = _number(obj, "confidence", 0.95)
    if not 0 < confidence < 1:
        raise ValueError(f"quality.confidence must be strictly between 0 and 1, not {confidence}")
    shadow_share = _number(obj, "shadow_share", 1.0)
    if not 0 <= shadow_share <= 1:
        raise ValueError(f"quality.shadow_share must be between 0 and 1, not {shadow_share}")
    return QualityConfig(output=output, task=task, metric=metric, min_samples=min_samples,
                         max_drop=max_drop, floor=floor, threshold=threshold, positive=positive,
                         confidence=confidence, shadow_share=shadow_share)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _string(obj: dict[Any, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"quality.{key} must be a string, not {_kind(value)}")
    return value


def _integer(obj: dict[Any, Any], key: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writers may say 200.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"quality.{key} must be an integer, not {_kind(value)} ({value!r})")
    return value


def _number(obj: dict[Any, Any], key: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"quality.{key} must be a number, not {_kind(value)} ({value!r})")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"quality.{key} must be a finite number, not {value!r}")
    return result


#: Commands set quality keys among the guard's settings (`ctl guard MODEL
#: quality.metric=recall`): "quality.<key>" overrides that key of the file's
#: object; "quality" = "off" turns quality off, "on" turns it on (defaults).
OVERRIDE_PREFIX = "quality"


def is_quality_override(key: str) -> bool:
    return key == OVERRIDE_PREFIX or key.startswith(OVERRIDE_PREFIX + ".")


def with_overrides(obj: object, overrides: dict[str, str]) -> object:
    """The "quality" object in effect: the file's (`obj`, None if it has none) with a
    command's quality keys applied; None when quality is off. Values are read as
    JSON when they parse ("200", "0.8", "null"), else as strings ("SCORES").
    Raises ValueError for an unknown switch value."""
    keys = {k: v for k, v in overrides.items() if is_quality_override(k)}
    if not keys:
        return obj
    switch = keys.pop(OVERRIDE_PREFIX, None)
    if switch is not None and switch not in ("on", "off"):
        raise ValueError(f"quality must be 'on' or 'off', not {switch!r}")
    if switch == "off":
        return None
    if obj is not None and not isinstance(obj, dict):
        return obj  # the file's mistake, reported by parse_quality
    merged = dict(obj) if obj is not None else {}
    for key, text in keys.items():
        merged[key[len(OVERRIDE_PREFIX) + 1:]] = _json_value(text)
    return merged


def _json_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text
