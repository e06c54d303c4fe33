"""Dynamic batching settings of a model, in Triton's names.

In `<repository>/<model>/sidecar.json`:

    {"dynamic_batching": {"max_batch_size": 32,
                          "max_queue_delay_microseconds": 200,
                          "preferred_batch_size": [8, 16]}}

`{"dynamic_batching": null}` (or `max_batch_size` 0) turns batching off for
the model whatever the server's default (`--max-batch-size`,
`--max-queue-delay-us`). A version batches only if its signature has a batch
dimension: every input and output has a dynamic first dimension (and, where
the model names it, the same name). `batch_refusal` says why not otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.loader.signature import Signature
from sidecar.source.policy import POLICY_FILE, read_model_settings

KEY = "dynamic_batching"
_FIELDS = ("max_batch_size", "max_queue_delay_microseconds", "preferred_batch_size")
#: Rows in one run at most: a bound on what one batch may allocate.
MAX_BATCH_SIZE = 4096
#: One second: a longer wait is a configuration mistake, not batching.
MAX_DELAY_US = 1_000_000


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch_size: int  # rows (sum of the requests' first dimensions) per run
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size,
                "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
                "preferred_batch_size": list(self.preferred_batch_size)}


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{KEY}.{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def parse_batching(obj: Any, default: BatchingConfig | None = None) -> BatchingConfig | None:
    """The settings in a `dynamic_batching` value (None: off); ValueError says what
    is wrong. Fields left out take the server default's values (else Triton's)."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValueError(f"{KEY} must be an object (or null), not {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{KEY} has unknown key(s) {', '.join(unknown)}; known:"
                         f" {', '.join(_FIELDS)}")
    base = default or BatchingConfig(0)
    size = _int("max_batch_size", obj.get("max_batch_size", base.max_batch_size), 0,
                MAX_BATCH_SIZE)
    delay = _int("max_queue_delay_microseconds",
                 obj.get("max_queue_delay_microseconds", base.max_queue_delay_microseconds),
                 0, MAX_DELAY_US)
    preferred = obj.get("preferred_batch_size", list(base.preferred_batch_size))
    if not isinstance(preferred, list):
        raise ValueError(f"{KEY}.preferred_batch_size must be a list of integers,"
                         f" not {preferred!r}")
    sizes = tuple(sorted({_int("preferred_batch_size", p, 1, max(1, size))
                          for p in preferred}))
    if size == 0:
        if "max_batch_size" not in obj and default is None:
            raise ValueError(f"{KEY}.max_batch_size is required (no server default is set:"
                             " see --max-batch-size)")
        return None
    return BatchingConfig(size, delay, sizes)


def read_batching(model_dir: Path, default: BatchingConfig | None
                  ) -> tuple[BatchingConfig | None, str]:
    """(settings, problem) for the model in `model_dir`: its sidecar.json's
    `dynamic_batching`, else the server default. A value that does not parse is
    reported and batching stays off for the model (a mistaken setting must not
    batch what its owner did not mean to)."""
    settings, problem = read_model_settings(model_dir)
    if KEY not in settings:
        return default, problem
    try:
        return parse_batching(settings[KEY], default), problem
    except ValueError as exc:
        return None, f"{model_dir / POLICY_FILE}: {exc}; dynamic batching is off"


def batch_refusal(signature: Signature) -> str:
    """Why a version with this signature cannot batch ("" if it can): every input
    and output needs a dynamic first dimension, one dimension by name."""
    names: set[str] = set()
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        for spec in specs:
            if not spec.shape:
                return f"{kind} '{spec.name}' is a scalar: it has no batch dimension"
            if spec.shape[0] != -1:
                return (f"{kind} '{spec.name}' has a fixed first dimension"
                        f" ({spec.shape[0]}): it has no batch dimension")
            if spec.symbols and spec.symbols[0] is not None:
                names.add(spec.symbols[0])
    if len(names) > 1:
        return ("the first dimensions are named differently"
                f" ({', '.join(sorted(names))}): they are not one batch dimension")
    return ""
