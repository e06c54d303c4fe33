"""The data-plane operations of the Open Inference Protocol, transport-free.

`infer` validates a decoded request against the signature of the version it
runs on, runs it (inline on the event loop when the version is known to be
fast, else in the bounded inference pool: see docs/design.md), and records
the outcome. Everything else answers questions from the manager's state.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import numpy as np

from sidecar import __version__
from sidecar.errors import InvalidInputError, ModelExecutionError, NotFoundError
from sidecar.guard.guard import Guard
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.types import (
    IndexEntry,
    InferInput,
    InferOutput,
    InferRequest,
    InferResult,
    ModelMetadata,
    VersionStatistics,
)
from sidecar.loader.onnx import Runner
from sidecar.loader.signature import Signature
from sidecar.manager.manager import ModelManager
from sidecar.manager.version import ModelVersion
from sidecar.source.repository import parse_version

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "sidecar"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "health", "reflection")


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        inline_max_us: int = 1000,
        strict_readiness: bool = True,
        guard: Guard | None = None,
        mirror: ShadowMirror | None = None,
    ) -> None:
        self._manager = manager
        self._executor = executor
        self._guard = guard
        self._mirror = mirror
        self._inline_max_ns = inline_max_us * 1000
        self._strict = strict_readiness
        self.stopping = False

    # ---- server --------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self.stopping or not self._manager.started:
            return False
        return self._manager.all_serving() if self._strict else True

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    # ---- models --------------------------------------------------------------

    def model_known(self, model: str) -> bool:
        return self._manager.has_model(model)

    def model_ready(self, model: str, version: str) -> bool:
        return self._manager.is_ready(model, version)

    def _metadata_version(self, model: str, version: str) -> ModelVersion:
        handle = self._manager.acquire(model, version)
        handle.release()  # only the signature is read; no drain needed for that
        return handle

    def model_metadata(self, model: str, version: str) -> ModelMetadata:
        chosen = self._metadata_version(model, version)
        assert chosen.loaded is not None
        signature = chosen.loaded.signature
        entry = self._manager.entry(model)
        versions = [str(n) for n in sorted(entry.serving.loaded)]
        return ModelMetadata(model, versions, PLATFORM, signature.inputs, signature.outputs)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        for entry in self._manager.entries():
            for number in sorted(entry.versions):
                version = entry.versions[number]
                state = entry.state_of(version)
                if ready_only and entry.serving.role(version) is None:
                    continue
                rows.append(IndexEntry(entry.name, str(number), state, version.reason))
        return rows

    def statistics(self, model: str, version: str) -> list[VersionStatistics]:
        if model:
            entries = [self._manager.entry(model)]
        else:
            entries = self._manager.entries()
        rows: list[VersionStatistics] = []
        for entry in entries:
            loaded = entry.serving.loaded
            if version:
                number = parse_version(version)
                if number is None or number not in loaded:
                    raise NotFoundError(f"model '{entry.name}' has no loaded version '{version}'")
                chosen = [loaded[number]]
            else:
                chosen = [loaded[n] for n in sorted(loaded)]
            for v in chosen:
                s = v.stats
                rows.append(VersionStatistics(
                    entry.name, str(v.number), s.last_inference_ms, s.inference_count,
                    s.execution_count, (s.success.count, s.success.ns),
                    (s.fail.count, s.fail.ns), (s.compute_infer.count, s.compute_infer.ns),
                ))
        return rows

    async def load(self, model: str, version: int | None = None) -> None:
        """RepositoryModelLoad: load and activate (the highest loadable version,
        or the one given)."""
        await self._manager.activate(model, str(version) if version else "", actor="rpc",
                                     reason="RepositoryModelLoad")

    async def unload(self, model: str) -> None:
        """RepositoryModelUnload: stop serving the model, drain, unload every version."""
        await self._manager.unload(model, actor="rpc", reason="RepositoryModelUnload")

    # ---- inference -------------------------------------------------------------

    def _failed(self, version: ModelVersion, start: int) -> None:
        """A server-side failure: counted, and told to the guard."""
        elapsed = time.perf_counter_ns() - start
        version.stats.record_failure(elapsed)
        if self._guard is not None:
            self._guard.observe(version, False, elapsed)

    async def infer(self, request: InferRequest) -> InferResult:
        start = time.perf_counter_ns()
        version = self._manager.acquire(request.model, request.version)
        try:
            assert version.loaded is not None  # a READY version in serving is loaded
            signature = version.loaded.signature
            feeds = _validated_feeds(version, signature, request.inputs)
            names = _requested_outputs(version, signature, request.outputs)
            runner = version.loaded.runner
            stats = version.stats
            elements = sum(t.data.size for t in request.inputs) or 1
            try:
                # Inline only when this request is predicted short: a large batch on a
                # model that is usually fast still goes to the pool.
                if stats.ns_per_element * elements < self._inline_max_ns:
                    arrays, infer_ns = _timed_run(runner, feeds, names)
                else:
                    loop = asyncio.get_running_loop()
                    # Timed inside the worker: waiting for a thread is not compute.
                    arrays, infer_ns = await loop.run_in_executor(
                        self._executor, _timed_run, runner, feeds, names)
            except ModelExecutionError as exc:
                self._failed(version, start)
                raise ModelExecutionError(f"{version.label} failed: {exc}") from exc
            guard = self._guard
            if guard is not None and guard.nonfinite_check(version.model):
                bad = _non_finite(names, arrays)
                if bad:
                    self._failed(version, start)
                    raise ModelExecutionError(f"{version.label} produced non-finite values"
                                              f" in output '{bad}'")
            end = time.perf_counter_ns()
            first = request.inputs[0].shape if request.inputs else ()
            stats.record_success(end - start, infer_ns, first[0] if first else 1, elements)
            if guard is not None:
                guard.observe(version, True, end - start)
                if self._mirror is not None and not request.version:
                    self._mirror.offer(version.model, feeds, names, arrays)
            output_specs = signature.output_by_name
            outputs = [
                InferOutput(name, output_specs[name].datatype, array)
                for name, array in zip(names, arrays, strict=True)
            ]
            return InferResult(request.model, str(version.number), request.id, outputs)
        finally:
            version.release()


def _timed_run(runner: Runner, feeds: dict[str, np.ndarray], names: list[str]
               ) -> tuple[list[np.ndarray], int]:
    start = time.perf_counter_ns()
    arrays = runner.run(feeds, names)
    return arrays, time.perf_counter_ns() - start


def _non_finite(names: list[str], arrays: list[np.ndarray]) -> str:
    """The first output holding NaN or infinity, or ""."""
    for name, array in zip(names, arrays, strict=True):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return name
    return ""


def _validated_feeds(
    version: ModelVersion, signature: Signature, inputs: list[InferInput]
) -> dict[str, np.ndarray]:
    specs = signature.input_by_name
    feeds: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for tensor in inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise InvalidInputError(
                f"{version.label} has no input '{tensor.name}' (its inputs: {known})"
            )
        if tensor.name in feeds:
            raise InvalidInputError(f"input '{tensor.name}' is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"input '{tensor.name}' of {version.label} expects datatype {spec.datatype},"
                f" got {tensor.datatype}"
            )
        if not spec.fits(tensor.shape):
            raise InvalidInputError(
                f"input '{tensor.name}' of {version.label} expects shape {list(spec.shape)},"
                f" got {list(tensor.shape)}"
            )
        for symbol, size in zip(spec.symbols, tensor.shape, strict=False):
            if symbol is not None and sizes.setdefault(symbol, size) != size:
                raise InvalidInputError(
                    f"input '{tensor.name}' of {version.label}: dimension '{symbol}' is"
                    f" {size} here but {sizes[symbol]} in another input"
                )
        feeds[tensor.name] = tensor.data
    if len(feeds) != len(specs):
        missing = ", ".join(name for name in specs if name not in feeds)
        raise InvalidInputError(f"{version.label} needs input(s) {missing}, which are missing")
    return feeds


def _requested_outputs(
    version: ModelVersion, signature: Signature, requested: list[str]
) -> list[str]:
    if not requested:
        return list(signature.output_names)
    specs = signature.output_by_name
    for name in requested:
        if name not in specs:
            known = ", ".join(specs)
            raise InvalidInputError(
                f"{version.label} has no output '{name}' (its outputs: {known})"
            )
    if len(set(requested)) != len(requested):
        raise InvalidInputError("an output is requested twice")
    return requested
