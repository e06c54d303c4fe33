"""Build a warmed-up onnxruntime session from one version's model file.

`load()` is the heavy step (run off the request path): it digests the file
(streamed SHA-256), creates the session with the configured options, reads
the signature and what the file says about itself (producer, doc string,
metadata_props: `OnnxMeta`, bounded), and runs a warm-up inference on
generated data. Any failure is a `ModelLoadError` with a one-line reason. A
`Runner` then wraps the session for the manager and handlers, so nothing above
this module touches onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
#: Bounds on what a model file says about itself, so that no file can bloat a
#: response: its doc string, any other text (names, keys, values), its
#: metadata_props entries (the first by key), and the head of the file read for
#: producer_version.
MAX_DOC_STRING = 1000
MAX_META_TEXT = 256
MAX_META_PROPS = 64
_HEAD = 64 * 1024
#: onnxruntime's model version when the file sets none.
_NO_MODEL_VERSION = 2**63 - 1


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
class OnnxMeta:
    """What an ONNX file says about itself (ModelProto's fields), each bounded:
    texts to MAX_META_TEXT characters, the doc string to MAX_DOC_STRING, at most
    MAX_META_PROPS metadata_props (the first by key); a cut text ends in "..."."""

    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    #: the model's doc string, else its graph's
    doc_string: str = ""
    model_version: int = 0  # 0: not set
    graph_name: str = ""
    #: metadata_props (training data, author, ...), sorted by key
    metadata_props: tuple[tuple[str, str], ...] = ()
    #: entries of metadata_props left out (beyond MAX_META_PROPS)
    props_dropped: int = 0


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What a version's file was when it was loaded: its identity beside the number."""

    path: Path
    digest: str  # sha256, hex
    size: int
    mtime_ns: int
    ctime_ns: int
    #: What the file says about itself, read by `load` (None: not loaded). It
    #: lives here, not only with the session, so that it is still known once the
    #: version is unloaded, and gone once the file changed (a new identity).
    onnx: OnnxMeta | None = None


class Runner:
    """A live session. `run` is thread-safe (onnxruntime sessions are).

    On the CPU provider alone, `run` calls the session's compiled run method
    directly (`InferenceSession._sess.run`), skipping the Python wrapper's own
    input checks (a microsecond a call: requests are checked against the
    signature before they get here) and its fallback to other providers (none
    to fall back from). Sessions without it (another onnxruntime) and other
    providers go through `InferenceSession.run`."""

    __slots__ = ("_output_names", "_run", "_session", "_text_inputs", "direct")

    def __init__(self, session: Any, signature: Signature) -> None:
        self._session = session
        self._output_names = list(signature.output_names)
        self._text_inputs = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
        compiled = getattr(session, "_sess", None)
        direct = getattr(compiled, "run", None)
        cpu_only = getattr(session, "get_providers", list)() == ["CPUExecutionProvider"]
        #: whether `run` calls the compiled session directly
        self.direct = callable(direct) and cpu_only
        self._run: Any = direct if self.direct else session.run

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Run the model; any onnxruntime failure is the model's (ModelExecutionError).

        Requests are validated against the signature before they get here, so an
        error raised by onnxruntime is counted against the version.
        """
        if self._session is None:
            raise ModelExecutionError("session is closed")
        if self._text_inputs:
            feeds = {k: _as_text(k, v) if k in self._text_inputs else v for k, v in feeds.items()}
        try:
            result: list[np.ndarray] = self._run(
                outputs or self._output_names, feeds if type(feeds) is dict else dict(feeds),
                None)
        except Exception as exc:  # onnxruntime raises several unrelated classes
            raise ModelExecutionError(one_line(exc)) from exc
        return result

    def close(self) -> None:
        # onnxruntime frees a session when the last reference goes.
        self._session = None
        self._run = None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    identity: FileIdentity
    signature: Signature
    runner: Runner
    load_ns: int
    warmup_ns: int  # one warm-up inference, after the first
    warmup_elements: int = 1  # input elements of that warm-up inference

    @property
    def meta(self) -> OnnxMeta:
        """What the loaded file says about itself (kept on its identity)."""
        return self.identity.onnx or _NO_META


_NO_META = OnnxMeta()


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


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _meta_text(meta: Any, name: str, limit: int = MAX_META_TEXT) -> str:
    """One text of onnxruntime's ModelMetadata; "" if absent or not UTF-8 (a
    hostile file's bytes must not fail the load)."""
    try:
        value = getattr(meta, name)
    except Exception:  # UnicodeDecodeError, from pybind11
        return ""
    return _cut(value, limit) if isinstance(value, str) else ""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at `pos`: (value, next position); (-1, pos) if cut or too long."""
    value = shift = 0
    for end in range(pos, min(len(data), pos + 10)):
        byte = data[end]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, end + 1
        shift += 7
    return -1, pos


def producer_version(head: bytes) -> str:
    """ModelProto.producer_version (field 3), which onnxruntime does not expose,
    from the first bytes of the file. Protobuf writers put fields in number
    order, so it comes right after ir_version and producer_name; it is looked for
    only there, and "" is the answer for anything else."""
    pos = 0
    while pos < len(head):
        key, pos = _varint(head, pos)
        if key < 0 or key >> 3 > 3:
            return ""
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(head, pos)
            if value < 0:
                return ""
        elif wire == 2:
            length, pos = _varint(head, pos)
            if length < 0 or pos + length > len(head):
                return ""
            if field == 3:
                return _cut(head[pos:pos + length].decode("utf-8", "replace"), MAX_META_TEXT)
            pos += length
        else:
            return ""
    return ""


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(_HEAD)
    except OSError:
        return b""


def onnx_meta(session: Any, head: bytes = b"") -> OnnxMeta:
    """What a session's model says about itself (see OnnxMeta), and its
    producer_version from the file's `head`. Never raises: what cannot be read
    is left empty."""
    try:
        meta = session.get_modelmeta()
    except Exception:
        return OnnxMeta(producer_version=producer_version(head))
    try:
        version = int(meta.version)
    except Exception:
        version = 0
    try:
        props: dict[str, str] = dict(meta.custom_metadata_map)
    except Exception:  # a key or value that is not UTF-8
        props = {}
    kept = sorted(props.items())[:MAX_META_PROPS]
    return OnnxMeta(
        producer_name=_meta_text(meta, "producer_name"),
        producer_version=producer_version(head),
        domain=_meta_text(meta, "domain"),
        doc_string=(_meta_text(meta, "description", MAX_DOC_STRING)
                    or _meta_text(meta, "graph_description", MAX_DOC_STRING)),
        model_version=0 if version == _NO_MODEL_VERSION else version,
        graph_name=_meta_text(meta, "graph_name"),
        metadata_props=tuple((_cut(str(k), MAX_META_TEXT), _cut(str(v), MAX_META_TEXT))
                             for k, v in kept),
        props_dropped=len(props) - len(kept),
    )


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
    identity = replace(identity, onnx=onnx_meta(session, _read_head(path)))
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
