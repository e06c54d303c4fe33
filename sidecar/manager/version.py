"""One model version as the manager tracks it: phase, identity, handles, counters.

All mutation happens on the event loop thread (requests take and release
handles in their coroutine; loads finish there too), so counters need no lock.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.guard.window import OutcomeWindow
from sidecar.loader.onnx import FileIdentity, LoadedModel
from sidecar.manager.latency import LatencyHistogram


class Phase(enum.Enum):
    """Lifecycle of a version. Its *role* (ACTIVE, PREVIOUS, WARM) comes from
    the serving state while it is READY; see `ModelVersion.state`."""

    UNLOADED = "UNLOADED"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class VersionStats:
    """Cumulative since load, Triton's statistics vocabulary.

    `fail` counts server-side failures only (the model raised); requests
    refused for bad input never reach the model and are not counted.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # batch elements inferred
    execution_count: int = 0  # model runs
    last_inference_ms: int = 0
    #: Compute time per input element, exponentially weighted: times a request's
    #: element count, it predicts the request's compute (inline vs pool).
    ns_per_element: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record_success(self, total_ns: int, infer_ns: int, batch: int, elements: int = 1
                       ) -> None:
        self.success.add(total_ns)
        self.latency.record(total_ns)
        self.compute_infer.add(infer_ns)
        self.inference_count += batch
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.ns_per_element += (infer_ns / max(1, elements) - self.ns_per_element) * 0.05

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.latency.record(total_ns)
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000


@dataclass(eq=False, slots=True)
class ModelVersion:
    model: str
    number: int
    path: Path
    phase: Phase = Phase.UNLOADED
    reason: str = ""
    loaded: LoadedModel | None = None
    #: The file as last identified (digest, size, times); None until read.
    identity: FileIdentity | None = None
    loaded_at: float = 0.0  # unix seconds
    activated_at: float = 0.0
    deactivated_at: float = 0.0
    #: Loaded on request (`load`): stays warm beyond the warm-version budget
    #: until it is activated or unloaded.
    held: bool = False
    inflight: int = 0
    stats: VersionStats = field(default_factory=VersionStats)
    #: The guard's sliding window of this version's outcomes (None: not watched).
    window: OutcomeWindow | None = None
    _drained: asyncio.Event | None = None

    @property
    def label(self) -> str:
        return f"model '{self.model}' version {self.number}"

    @property
    def digest(self) -> str:
        """The digest of the loaded bytes, else of the file as last identified."""
        if self.loaded is not None:
            return self.loaded.identity.digest
        return self.identity.digest if self.identity else ""

    def release(self) -> None:
        """Give back a handle taken by `ModelManager.acquire`."""
        self.inflight -= 1
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self) -> None:
        """Wait until no request holds this version. Call after it left serving."""
        if self.inflight == 0:
            return
        self._drained = asyncio.Event()
        if self.inflight:  # re-check: release() may have run meanwhile
            await self._drained.wait()
        self._drained = None
