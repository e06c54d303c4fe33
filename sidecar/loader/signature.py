"""A version's signature: its input and output tensors with V2 datatypes.

Dynamic dimensions are -1. The signature is what requests are validated
against and what ModelMetadata/ModelConfig report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from sidecar.datatypes import NUMPY_DTYPES


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # V2 name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    #: Names of symbolic dimensions (None where fixed or anonymous): two
    #: dimensions with one name must get one size in a request.
    symbols: tuple[str | None, ...] = ()

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return NUMPY_DTYPES[self.datatype]

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dims equal)."""
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        return f"{self.datatype}{list(self.shape)}"


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "output_by_name", {t.name: t for t in self.outputs})

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)
