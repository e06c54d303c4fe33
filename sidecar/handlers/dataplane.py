"""The data-plane operations of the Open Inference Protocol, transport-free.

`infer` validates a decoded request against the signature of the version it
runs on, runs it (inline on the event loop when the version is known to be
fast, else in the bounded inference pool: see docs/design.md), and records
the outcome. A successful request that carries an id, for a model with
quality settings, is told to the quality engine (one dict lookup for every
other request). Everything else answers questions from the manager's state.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, NoReturn, TypeVar

import numpy as np

from sidecar import __version__
from sidecar.datatypes import NUMPY_DTYPES
from sidecar.errors import InvalidInputError, ModelExecutionError, NotFoundError
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.types import (
    IndexEntry,
    InferInput,
    InferRequest,
    InferResult,
    ModelMetadata,
    TensorLayout,
    VersionStatistics,
)
from sidecar.handlers.versionmeta import version_parameters
from sidecar.loader.onnx import Runner
from sidecar.loader.signature import Signature
from sidecar.manager.manager import ModelManager
from sidecar.manager.servable import Servable
from sidecar.quality.engine import QualityEngine
from sidecar.source.repository import parse_version

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "sidecar"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "health", "reflection")
T = TypeVar("T")
#: BYTES tensors above either size are decoded in the pool (see `_decode`).
_INLINE_BYTES_ELEMENTS = 4096
_INLINE_BYTES = 1 << 20


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        inline_max_us: int = 1000,
        strict_readiness: bool = True,
        nonfinite: Callable[[str], bool] | None = None,
        mirror: ShadowMirror | None = None,
        quality: QualityEngine | None = None,
    ) -> None:
        self._manager = manager
        #: model -> quality state: the models whose answers are remembered (the
        #: engine's own dict, so a change of settings shows at once)
        self._remembering: dict[str, Any] = quality.models if quality is not None else {}
        self._remember: Callable[..., None] = (quality.answered if quality is not None
                                               else _nothing)
        self._executor = executor
        #: model -> whether non-finite outputs count as failures (the guard's setting)
        self._nonfinite = nonfinite
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

    def model_metadata(self, model: str, version: str) -> ModelMetadata:
        handle = self._manager.acquire(model, version)
        handle.release()  # only the signature is read; no drain needed for that
        signature = handle.signature
        entry = self._manager.entry(model)
        versions = [str(n) for n in sorted(entry.serving.loaded)]
        batcher = handle.batcher
        batching = (None if batcher is None else
                    (batcher.max_rows, batcher.config.max_queue_delay_microseconds,
                     batcher.config.preferred_batch_size))
        return ModelMetadata(model, versions, PLATFORM, signature.inputs, signature.outputs,
                             batching, handle.batching_note,
                             parameters=version_parameters(handle))

    def repository_index(self, ready_only: bool = False, *, detailed: bool = True
                         ) -> list[IndexEntry]:
        """Every version on disk. Not `detailed` (the inference port): reasons keep
        their first line without server paths; the control plane has the rest."""
        rows: list[IndexEntry] = []
        for entry in self._manager.entries():
            for number in sorted(entry.versions):
                version = entry.versions[number]
                state = entry.state_of(version)
                if ready_only and entry.serving.role(version) is None:
                    continue
                reason = version.reason or entry.skipped_reason(version)
                if not detailed:
                    reason = _public(reason)
                rows.append(IndexEntry(entry.name, str(number), state, reason))
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
                    (s.queue.count, s.queue.ns), (s.compute_input.count, s.compute_input.ns),
                    (s.compute_output.count, s.compute_output.ns),
                    tuple((rows, d.count, d.ns) for rows, d in sorted(s.batches.items())),
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

    async def _feeds(self, request: InferRequest, plan: Plan) -> dict[str, np.ndarray]:
        """The checked inputs' arrays. Raw numeric tensors came decoded (views of
        the message); a large BYTES tensor (decoded element by element in Python)
        is decoded in the pool, so the event loop keeps answering."""
        feeds: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            if tensor.data is None and tensor.datatype == "BYTES" and (
                    tensor.elements > _INLINE_BYTES_ELEMENTS or tensor.size > _INLINE_BYTES):
                loop = asyncio.get_running_loop()
                feeds[tensor.name] = await loop.run_in_executor(self._executor, tensor.array)
            else:
                feeds[tensor.name] = tensor.array()
        return feeds

    async def _fails_elsewhere(self, handle: Servable, feeds: dict[str, np.ndarray],
                               names: list[str]) -> bool:
        """Whether a watched version's failure is the input's: the same input fails
        on the version it is judged against (the warm previous one for the active
        version, the active one for a candidate) too. Only on failures, only while
        the guard watches (a failure of an unwatched version judges nothing)."""
        if handle.observer is None:
            return False
        other = self._manager.acquire_reference(handle)
        if other is None:
            return False
        specs = other.signature.input_by_name
        if (any(n not in other.signature.output_by_name for n in names)
                or set(feeds) != set(specs)
                or any(not specs[n].fits(a.shape) or specs[n].dtype != a.dtype
                       for n, a in feeds.items() if specs[n].datatype != "BYTES")):
            other.release()  # the other version would refuse it for its own signature:
            return False     # no verdict, the failure counts
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, other.runner.run, feeds, names)
        except ModelExecutionError:
            return True
        except Exception:  # e.g. the other version's signature differs: no verdict
            return False
        finally:
            other.release()
        return False

    @staticmethod
    def _failed(handle: Servable, start: int) -> None:
        """A server-side failure: counted, and told to the observer (the guard)."""
        elapsed = time.perf_counter_ns() - start
        handle.stats.record_failure(elapsed)
        if handle.observer is not None:
            handle.observer.observe(False, elapsed)

    async def _run(self, handle: Servable, plan: Plan, feeds: dict[str, np.ndarray],
                   request: InferRequest) -> tuple[list[np.ndarray], int, int, bool]:
        """(outputs, compute ns, queued ns, batched): in a dynamic batch when the
        session batches and the request fits one, else inline when predicted short
        (a large request on a usually fast model still goes to the pool), else in
        the pool."""
        batcher = handle.batcher
        if batcher is not None and plan.rows and plan.rows <= batcher.max_rows:
            arrays, infer_ns, queued_ns = await batcher.submit(
                plan.batch_key, plan.names, feeds, plan.rows, request.time_left)
            return arrays, infer_ns, queued_ns, True
        if handle.stats.ns_per_element * plan.elements < self._inline_max_ns:
            began = time.perf_counter_ns()
            arrays = handle.runner.run(feeds, plan.names)
            return arrays, time.perf_counter_ns() - began, 0, False
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter_ns()
        arrays, infer_ns, began = await loop.run_in_executor(
            self._executor, _timed_run, handle.runner, feeds, plan.names)
        return arrays, infer_ns, began - submitted, False

    async def infer(self, request: InferRequest, encode: Callable[[InferResult], T]) -> T:
        """Run one request on the session it names (or the active one's) and return
        its answer as `encode` makes it (timed as the version's compute_output)."""
        answer = self.infer_now(request, encode)
        if type(answer) is CoroutineType:
            return await answer  # type: ignore[no-any-return]
        return answer  # type: ignore[return-value]

    def infer_now(self, request: InferRequest, encode: Callable[[InferResult], T]
                  ) -> T | Coroutine[Any, Any, T]:
        """`infer` without a coroutine where none is needed: the answer at once
        when the request runs inline on the calling thread (inputs decoded by the
        rpc layer, a version predicted fast, no dynamic batching: the common
        case), else a coroutine (`types.CoroutineType`) that gives it, which the
        caller must await: it holds the version until it ends.

        The happy path is lean: a request whose layout (input names, datatypes,
        shapes, requested outputs) the session has seen before skips validation
        (its `Plan` is cached on the session), and the clock is read four times."""
        start = request.received_ns or time.perf_counter_ns()
        handle = self._manager.acquire(request.model, request.version)
        held = True  # False once a coroutine returned owns the handle
        try:
            key = request.key if request.key is not None else _layout(request)
            plan = handle.plans.get(key) or _plan(handle, request, key)
            feeds = request.feeds
            if feeds is None or handle.batcher is not None or plan.text_out \
                    or handle.stats.ns_per_element * plan.elements >= self._inline_max_ns:
                held = False
                return self._infer_later(handle, plan, request, encode, start)
            before = time.perf_counter_ns()
            try:
                arrays = handle.runner.run(feeds, plan.names)  # inline: the fast path
            except ModelExecutionError as exc:
                held = False
                return self._execution_failed(handle, plan, feeds, exc, start)
            ran = time.perf_counter_ns()
            encoded = encode(self._result(handle, plan, request, feeds, arrays, start))
            self._succeeded(handle, plan, request, feeds, arrays, start, before, ran,
                            ran - before, 0, False)
            return encoded
        finally:
            if held:
                handle.release()

    async def _infer_later(self, handle: Servable, plan: Plan, request: InferRequest,
                           encode: Callable[[InferResult], T], start: int) -> T:
        """The rest of `infer_now` for requests that wait: inputs to decode, a
        dynamic batch, a run in the pool, or BYTES answers to encode. Releases
        `handle`."""
        try:
            feeds = request.feeds
            if feeds is None:
                feeds = await self._feeds(request, plan)
            before = time.perf_counter_ns()
            try:
                arrays, infer_ns, queued_ns, batched = await self._run(
                    handle, plan, feeds, request)
            except ModelExecutionError as exc:
                await self._execution_failed(handle, plan, feeds, exc, start, release=False)
            ran = time.perf_counter_ns()
            result = self._result(handle, plan, request, feeds, arrays, start)
            if plan.text_out and any(a.size > _INLINE_BYTES_ELEMENTS for a in arrays):
                # BYTES are encoded element by element: not on the loop
                encoded = await asyncio.get_running_loop().run_in_executor(
                    self._executor, encode, result)
            else:
                encoded = encode(result)
            self._succeeded(handle, plan, request, feeds, arrays, start, before, ran,
                            infer_ns, queued_ns, batched)
            return encoded
        finally:
            handle.release()

    async def _execution_failed(self, handle: Servable, plan: Plan,
                                feeds: dict[str, np.ndarray], exc: ModelExecutionError,
                                start: int, *, release: bool = True) -> NoReturn:
        """Raise what a failed run means: the input's error when it fails alike on
        the version this one is judged against, else the version's (counted, and
        told to the guard). Releases `handle` when told to."""
        try:
            if await self._fails_elsewhere(handle, feeds, plan.names):
                raise InvalidInputError(
                    f"the input fails on {handle.label} and on the version it is"
                    f" compared with alike, so it is the input: {_public(str(exc))}"
                ) from exc
            self._failed(handle, start)
            # The client gets one line without server paths; the control plane's
            # statistics and the guard's events keep the failure.
            raise ModelExecutionError(f"{handle.label} failed: {_public(str(exc))}") from exc
        finally:
            if release:
                handle.release()

    def _result(self, handle: Servable, plan: Plan, request: InferRequest,
                feeds: dict[str, np.ndarray], arrays: list[np.ndarray], start: int
                ) -> InferResult:
        """The answer, once its outputs are known to be acceptable (finite, where
        the guard counts non-finite outputs as failures)."""
        if plan.floats and self._nonfinite is not None and self._nonfinite(handle.model):
            bad = _non_finite(plan.names, arrays)
            if bad and not _non_finite(list(feeds), list(feeds.values())):
                self._failed(handle, start)
                raise ModelExecutionError(f"{handle.label} produced non-finite values"
                                          f" in output '{bad}'")
        return InferResult(request.model, handle.version_text, request.id, plan.names,
                           plan.datatypes, arrays, plan)

    def _succeeded(self, handle: Servable, plan: Plan, request: InferRequest,
                   feeds: dict[str, np.ndarray], arrays: list[np.ndarray], start: int,
                   before: int, ran: int, infer_ns: int, queued_ns: int, batched: bool
                   ) -> None:
        """An answered request: statistics, the guard, the shadow, the quality join."""
        end = time.perf_counter_ns()
        handle.stats.record_success(
            end - start, infer_ns, plan.rows or 1, plan.elements,
            before - start, end - ran, queued_ns, 0 if batched else 1, end)
        observer = handle.observer
        if observer is not None:
            observer.observe(True, end - start)
            if self._mirror is not None and not request.version:
                self._mirror.offer(handle.model, feeds, plan.names, arrays)
        if request.id and handle.model in self._remembering:
            self._remember(handle, request.id, plan.names, arrays, feeds,
                           bool(request.version))


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity
class Plan:
    """What a request of one layout needs on one session, checked once: the
    outputs to fetch and their datatypes, its size. Contents are checked per
    request (by their decoding); the layout once."""

    names: list[str]  # outputs, in the order answered
    datatypes: tuple[str, ...]
    elements: int  # input elements (at least 1): predicts the compute time
    rows: int  # first dimension shared by every input (the batch), 0 if none
    floats: bool  # some output is floating point (non-finite values possible)
    text_out: bool  # some output is BYTES
    layout: tuple[Any, ...]  # the request layout this plan is for
    #: what requests that may share a dynamic batch have in common: the layout
    #: without the first dimension
    batch_key: tuple[Any, ...]


#: Layouts remembered per session; a client sending ever new shapes costs a
#: validation per request beyond this, never memory.
_MAX_PLANS = 256


def _layout(request: InferRequest) -> tuple[Any, ...]:
    return (tuple((t.name, t.datatype, t.shape) for t in request.layout()),
            tuple(request.outputs))


def _plan(handle: Servable, request: InferRequest, key: tuple[Any, ...]) -> Plan:
    """Validate a request's layout against the session's signature (raising
    InvalidInputError with the reason) and remember the plan for its layout."""
    signature = handle.signature
    inputs = request.layout()
    _validated_inputs(handle, signature, inputs)
    names = _requested_outputs(handle, signature, request.outputs)
    specs = signature.output_by_name
    datatypes = tuple(specs[n].datatype for n in names)
    shapes = [t.shape for t in inputs]
    firsts = {s[0] for s in shapes if s}
    rows = firsts.pop() if len(firsts) == 1 and all(shapes) else 0
    plan = Plan(
        names=names, datatypes=datatypes,
        elements=max(1, sum(t.elements for t in inputs)),
        rows=rows,
        floats=any(NUMPY_DTYPES[d].kind in "fc" for d in datatypes),
        text_out="BYTES" in datatypes,
        layout=key,
        batch_key=(tuple((t.name, t.datatype, t.shape[1:]) for t in inputs),
                   tuple(names)),
    )
    if len(handle.plans) < _MAX_PLANS:
        handle.plans[key] = plan
    return plan


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s'\"/:]+){2,}/?")


def _public(reason: str) -> str:
    """A reason fit for any client: no server paths, no engine dump, one short line."""
    text = _PATH.sub("<path>", reason.splitlines()[0] if reason else "")
    return text if len(text) <= 160 else text[:157] + "..."


def _nothing(*_: Any) -> None:
    pass


def _timed_run(runner: Runner, feeds: dict[str, np.ndarray], names: list[str]
               ) -> tuple[list[np.ndarray], int, int]:
    """Run in the calling thread: (outputs, compute ns, when compute began)."""
    began = time.perf_counter_ns()
    arrays = runner.run(feeds, names)
    return arrays, time.perf_counter_ns() - began, began


def _non_finite(names: list[str], arrays: list[np.ndarray]) -> str:
    """The first output holding NaN or infinity, or ""."""
    for name, array in zip(names, arrays, strict=True):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return name
    return ""


def _validated_inputs(
    version: Servable, signature: Signature, inputs: Sequence[InferInput | TensorLayout]
) -> None:
    """The inputs by name, once names, datatypes and shapes fit the signature
    (before any of them is decoded)."""
    specs = signature.input_by_name
    feeds: dict[str, InferInput | TensorLayout] = {}
    sizes: dict[str, int] = {}
    for tensor in inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise InvalidInputError(
                f"{version.label} has no input '{tensor.name[:80]}' (its inputs: {known})"
            )
        if tensor.name in feeds:
            raise InvalidInputError(f"input '{tensor.name[:80]}' is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"input '{tensor.name[:80]}' of {version.label} expects datatype {spec.datatype},"
                f" got {tensor.datatype}"
            )
        if not spec.fits(tensor.shape):
            raise InvalidInputError(
                f"input '{tensor.name[:80]}' of {version.label} expects shape {list(spec.shape)},"
                f" got {list(tensor.shape)}"
            )
        for symbol, size in zip(spec.symbols, tensor.shape, strict=False):
            if symbol is not None and sizes.setdefault(symbol, size) != size:
                raise InvalidInputError(
                    f"input '{tensor.name[:80]}' of {version.label}: dimension '{symbol}' is"
                    f" {size} here but {sizes[symbol]} in another input"
                )
        feeds[tensor.name] = tensor
    if len(feeds) != len(specs):
        missing = ", ".join(name for name in specs if name not in feeds)
        raise InvalidInputError(f"{version.label} needs input(s) {missing}, which are missing")


def _requested_outputs(
    version: Servable, signature: Signature, requested: list[str]
) -> list[str]:
    if not requested:
        return list(signature.output_names)
    specs = signature.output_by_name
    for name in requested:
        if name not in specs:
            known = ", ".join(specs)
            raise InvalidInputError(
                f"{version.label} has no output '{name[:80]}' (its outputs: {known})"
            )
    if len(set(requested)) != len(requested):
        raise InvalidInputError("an output is requested twice")
    return requested
