"""Plain data passed between the rpc layer and the handlers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.loader.signature import TensorSpec


@dataclass(slots=True)
class InferInput:
    """One input tensor. The rpc layer may leave `data` to `decode`, so that a
    request is checked against the model (name, datatype, shape) before any
    time is spent decoding it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None
    decode: Callable[[], np.ndarray] | None = None
    #: bytes on the wire: large BYTES tensors are decoded off the event loop
    size: int = 0

    def array(self) -> np.ndarray:
        if self.data is None:
            assert self.decode is not None
            self.data = self.decode()
        return self.data

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: one per distinct layout
class TensorLayout:
    """An input's name, datatype and shape: what is checked against a signature,
    once per layout. The rpc layer keeps one object per layout it has seen, so a
    request's layout is a tuple of these, cheap to hash."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str = ""  # "" = the active version
    id: str = ""
    #: The inputs, each decoded or to be decoded (when `feeds` is None).
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # [] = all, in signature order
    #: The layout (input names, datatypes, shapes; requested outputs), hashable:
    #: what a version's validation plan is cached by. None: the handler makes it.
    key: tuple[Any, ...] | None = None
    #: The rpc layer's fast path: every input already decoded (raw numeric
    #: tensors, views of the message), by name, with `tensors` their layouts in
    #: request order; `inputs` is then empty.
    feeds: dict[str, np.ndarray] | None = None
    tensors: tuple[TensorLayout, ...] = ()
    received_ns: int = 0  # perf_counter_ns when the transport had the request (0: unknown)
    #: Seconds left before the client's deadline (None: no deadline); asked lazily.
    time_left: Callable[[], float | None] | None = None

    def layout(self) -> tuple[TensorLayout, ...] | list[InferInput]:
        """The inputs' names, datatypes and shapes, in request order."""
        return self.tensors if self.feeds is not None else self.inputs


@dataclass(slots=True)
class InferResult:
    """An answer: the outputs `names` (in the order asked), their V2 datatypes and
    arrays, from the version `version` of `model`."""

    model: str
    version: str
    id: str
    names: list[str]
    datatypes: tuple[str, ...]
    arrays: list[np.ndarray]
    #: The data plane's plan for the request (hashable, one per layout and
    #: session): answers of one plan share their metadata. None: not known.
    plan: Any = None


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: (max_batch_size, max_queue_delay_microseconds, preferred sizes) when the
    #: version batches dynamically; else None, with why not in `batching_note`
    batching: tuple[int, int, tuple[int, ...]] | None = None
    batching_note: str = ""
    #: ModelConfig parameters of the version: `created`, `updated` and its ONNX
    #: metadata (see sidecar/handlers/versionmeta.py)
    parameters: dict[str, str] = field(default_factory=dict)


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
    #: dynamic batches: (rows, runs, compute ns) by size
    batches: tuple[tuple[int, int, int], ...] = ()
