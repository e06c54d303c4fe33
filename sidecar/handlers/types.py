"""Plain data passed between the rpc layer and the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sidecar.loader.signature import TensorSpec


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str = ""  # "" = the active version
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # [] = all, in signature order
    decode_ns: int = 0  # time the rpc layer took to decode the tensors


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class InferResult:
    model: str
    version: str
    id: str
    outputs: list[InferOutput]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class VersionStatistics:
    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: tuple[int, int]  # (count, ns)
    fail: tuple[int, int]
    compute_infer: tuple[int, int]
    queue: tuple[int, int] = (0, 0)
    compute_input: tuple[int, int] = (0, 0)
    compute_output: tuple[int, int] = (0, 0)
