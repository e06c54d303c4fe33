"""Build a warmed-up onnxruntime session from one version's model file.

`load()` is the heavy step (run off the request path): it digests the file
(streamed SHA-256), creates the session with the configured options, reads
the signature, and runs a warm-up inference on generated data. Any failure is
a `ModelLoadError` with a one-line reason. A `Runner` then wraps the session
for the manager and handlers, so nothing above this module touches onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from sidecar.errors import InvalidInputError, ModelExecutionError, ModelLoadError
from sidecar.loader.signature import Signature, TensorSpec

#: onnxruntime element type -> V2 datatype.
ORT_TYPES: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_OPT_LEVELS: Final[dict[str, Any]] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_CHUNK = 1024 * 1024
_MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The onnxruntime options every session is built with (reported per version)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def check(self) -> None:
        """Fail fast at start on a provider this onnxruntime build lacks."""
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ValueError(
                f"execution provider(s) {', '.join(missing)} not available;"
                f" this onnxruntime has {', '.join(available)}"
            )
        if self.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"unknown graph optimisation level {self.graph_optimization!r}")

    def describe(self) -> dict[str, str]:
        return {
            "intra_op_threads": str(self.intra_op_threads),
            "inter_op_threads": str(self.inter_op_threads),
            "graph_optimization": self.graph_optimization,
            "providers": ",".join(self.providers),
        }


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What a version's file was when it was loaded: its identity beside the number."""

    path: Path
    digest: str  # sha256, hex
    size: int
    mtime_ns: int
    ctime_ns: int


class Runner:
    """A live session. `run` is thread-safe (onnxruntime sessions are)."""

    __slots__ = ("_output_names", "_session", "_text_inputs")

    def __init__(self, session: Any, signature: Signature) -> None:
        self._session = session
        self._output_names = list(signature.output_names)
        self._text_inputs = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Run the model; any onnxruntime failure is the model's (ModelExecutionError).

        Requests are validated against the signature before they get here, so an
        error raised by onnxruntime is counted against the version.
        """
        session = self._session
        if session is None:
            raise ModelExecutionError("session is closed")
        if self._text_inputs:
            feeds = {k: _as_text(k, v) if k in self._text_inputs else v for k, v in feeds.items()}
        try:
            result: list[np.ndarray] = session.run(outputs or self._output_names, dict(feeds))
        except Exception as exc:  # onnxruntime raises several unrelated classes
            raise ModelExecutionError(one_line(exc)) from exc
        return result

    def close(self) -> None:
        # onnxruntime frees a session when the last reference goes.
        self._session = None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    identity: FileIdentity
    signature: Signature
    runner: Runner
    load_ns: int
    warmup_ns: int  # one warm-up inference, after the first
    warmup_elements: int = 1  # input elements of that warm-up inference


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def file_identity(path: Path) -> FileIdentity:
    """Stat and digest a model file, reading it once in chunks."""
    if not path.exists():
        raise ModelLoadError(f"no {path.name} in {path.parent}")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            before = os.fstat(f.fileno())
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from exc
    if before.st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes)")
    return FileIdentity(path, digest.hexdigest(), before.st_size, before.st_mtime_ns,
                        before.st_ctime_ns)


def _tensor_spec(arg: Any, *, kind: str) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{kind} '{arg.name}' has type {arg.type}, which is not served")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    symbols = tuple(d if isinstance(d, str) and d else None for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape, symbols)


def _warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def load(path: Path, config: SessionConfig) -> LoadedModel:
    """Digest, build, inspect and warm up one version. Raises ModelLoadError."""
    start = time.perf_counter_ns()
    identity = file_identity(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization]
    # Fatal only: a failing model would print an error per request; the sidecar
    # counts failures itself and answers each with its reason.
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=list(config.providers))
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {one_line(exc)}") from exc
    signature = Signature(
        tuple(_tensor_spec(a, kind="input") for a in session.get_inputs()),
        tuple(_tensor_spec(a, kind="output") for a in session.get_outputs()),
    )
    runner = Runner(session, signature)
    feeds = _warmup_feeds(signature)
    try:
        runner.run(feeds)  # the first run allocates; time the second
        warm_start = time.perf_counter_ns()
        runner.run(feeds)
        warmup_ns = time.perf_counter_ns() - warm_start
    except ModelExecutionError as exc:
        raise ModelLoadError(f"warm-up inference failed: {exc}") from exc
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (identity.size, identity.mtime_ns):
        raise ModelLoadError(f"{path} changed while it was being loaded")
    elements = max(1, sum(int(a.size) for a in feeds.values()))
    return LoadedModel(identity, signature, runner, time.perf_counter_ns() - start, warmup_ns,
                       elements)


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime string tensors hold text: decode BYTES elements as UTF-8."""
    if array.size and isinstance(array.flat[0], str):
        return array
    try:
        return np.array([b.decode("utf-8") for b in array.ravel()], dtype=object).reshape(
            array.shape
        )
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"input '{name}': element is not valid UTF-8 (the model's string tensors hold"
            f" text): {exc.reason} at byte {exc.start}"
        ) from exc
