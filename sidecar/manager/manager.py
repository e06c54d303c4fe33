"""ModelManager: which versions exist, which are loaded, which one serves.

The one place that moves versions between the sets on disk / loaded / serving.
Requests call `acquire` (sync, no await: a dict lookup on an immutable
snapshot plus an in-flight count) and `release`. Changes run under one lock
per model, so commands on one model are serialised and different models
proceed in parallel; loads run in their own thread pool, off the request path.
A version is closed only after it left the serving state and drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.errors import ModelLoadError, NotFoundError, UnavailableError
from sidecar.loader.onnx import LoadedModel, SessionConfig, load
from sidecar.manager.serving import ServingState
from sidecar.manager.version import ModelVersion, Phase, VersionStats
from sidecar.source.repository import VersionOnDisk, parse_version, scan_model, scan_repository

log = logging.getLogger("sidecar.manager")

#: Told (model name, has a serving version) after every change of a model.
ReadinessListener = Callable[[str, bool], Awaitable[None]]
Loader = Callable[[Path, SessionConfig], LoadedModel]


@dataclass(eq=False)
class ModelEntry:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    serving: ServingState = field(default_factory=ServingState.empty)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def state_of(self, version: ModelVersion) -> str:
        """The state reported for a version: its role while READY, else its phase."""
        if version.phase is Phase.READY:
            return self.serving.role(version) or Phase.READY.name
        return version.phase.name


class ModelManager:
    def __init__(
        self,
        repository: Path,
        config: SessionConfig,
        *,
        load_threads: int = 2,
        loader: Loader = load,
    ) -> None:
        self._repository = repository
        self._config = config
        self._loader = loader
        self._load_pool = ThreadPoolExecutor(load_threads, thread_name_prefix="load")
        self._models: dict[str, ModelEntry] = {}
        self._listeners: list[ReadinessListener] = []
        self.started = False

    # ---- queries (request path) ----------------------------------------------

    def acquire(self, model: str, version: str = "") -> ModelVersion:
        """Take a handle on the version a request names (or the active one).

        The caller must `release()` the returned version when done.
        """
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model}'")
        serving = entry.serving  # read once: the request's snapshot
        if version:
            number = parse_version(version)
            chosen = serving.loaded.get(number) if number is not None else None
            if chosen is None:
                raise self._why_not_loaded(entry, version, number)
        else:
            chosen = serving.active
            if chosen is None:
                raise UnavailableError(f"model '{model}' has no serving version")
        chosen.inflight += 1
        return chosen

    def _why_not_loaded(
        self, entry: ModelEntry, text: str, number: int | None
    ) -> NotFoundError | UnavailableError:
        known = entry.versions.get(number) if number is not None else None
        if known is None:
            return NotFoundError(f"model '{entry.name}' has no version '{text}'")
        detail = f": {known.reason}" if known.reason else ""
        return UnavailableError(
            f"model '{entry.name}' version {number} is not loaded"
            f" (state {entry.state_of(known)}{detail})"
        )

    def entry(self, model: str) -> ModelEntry:
        entry = self._models.get(model)
        if entry is None:
            raise NotFoundError(f"unknown model '{model}'")
        return entry

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def is_ready(self, model: str, version: str = "") -> bool:
        entry = self._models.get(model)
        if entry is None:
            return False
        if not version:
            return entry.serving.active is not None
        number = parse_version(version)
        return number is not None and number in entry.serving.loaded

    def all_serving(self) -> bool:
        return all(e.serving.active is not None for e in self._models.values())

    def add_listener(self, listener: ReadinessListener) -> None:
        self._listeners.append(listener)

    # ---- changes ---------------------------------------------------------------

    async def start(self) -> None:
        """Scan the repository and serve each model's highest loadable version."""
        found = scan_repository(self._repository)
        for name, versions in found.items():
            self._models[name] = self._new_entry(name, versions)
        await asyncio.gather(*(self._start_model(name) for name in found))
        self.started = True

    async def _start_model(self, name: str) -> None:
        try:
            await self.load_model(name)
        except (NotFoundError, UnavailableError) as exc:
            # One bad model never stops the server or the others.
            log.error("model not served", extra={"model": name, "reason": str(exc)})

    def _new_entry(self, name: str, versions: dict[int, VersionOnDisk]) -> ModelEntry:
        entry = ModelEntry(name)
        for number, disk in versions.items():
            entry.versions[number] = ModelVersion(name, number, disk.path)
        return entry

    def _refresh(self, entry: ModelEntry) -> None:
        """Bring an entry's version list up to date with the disk (keeps loaded ones)."""
        on_disk = scan_model(self._repository, entry.name)
        for number, disk in on_disk.items():
            known = entry.versions.get(number)
            if known is None:
                entry.versions[number] = ModelVersion(entry.name, number, disk.path)
            elif known.phase is Phase.FAILED:
                known.phase, known.reason = Phase.UNLOADED, ""  # retry on request
        for number in [n for n, v in entry.versions.items() if n not in on_disk]:
            if entry.versions[number].phase in (Phase.UNLOADED, Phase.FAILED):
                del entry.versions[number]

    async def load_model(self, model: str, version: int | None = None) -> ModelVersion:
        """Load (if needed) and activate a version: the given one, or the highest
        that loads. The old active version stays loaded as the previous one."""
        entry = self._models.get(model)
        if entry is None:
            if not (self._repository / model).is_dir():
                raise NotFoundError(f"no model '{model}' in the repository")
            entry = self._models.setdefault(model, ModelEntry(model))
        async with entry.lock:
            self._refresh(entry)
            if not entry.versions:
                raise NotFoundError(f"model '{model}' has no version folders")
            if version is not None:
                if version not in entry.versions:
                    raise NotFoundError(f"model '{model}' has no version {version}")
                candidates = [entry.versions[version]]
            else:
                candidates = [entry.versions[n] for n in sorted(entry.versions, reverse=True)]
            chosen: ModelVersion | None = None
            for candidate in candidates:
                if await self._ensure_loaded(candidate):
                    chosen = candidate
                    break
            if chosen is None:
                last = candidates[-1]
                raise UnavailableError(
                    f"{last.label} cannot be loaded: {last.reason}"
                    if len(candidates) == 1
                    else f"no version of model '{model}' can be loaded"
                )
            await self._activate(entry, chosen)
            return chosen

    async def _ensure_loaded(self, version: ModelVersion) -> bool:
        if version.phase is Phase.READY:
            return True
        version.phase, version.reason = Phase.LOADING, ""
        log.info("loading", extra={"model": version.model, "version": version.number})
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(
                self._load_pool, self._loader, version.path, self._config
            )
        except ModelLoadError as exc:
            version.phase, version.reason = Phase.FAILED, str(exc)
            log.warning("load failed", extra={"model": version.model,
                                               "version": version.number, "reason": str(exc)})
            return False
        version.loaded, version.loaded_at = loaded, time.time()
        version.stats = VersionStats(mean_infer_ns=float(loaded.warmup_ns))
        version.phase = Phase.READY
        log.info("ready", extra={"model": version.model, "version": version.number,
                                 "digest": loaded.identity.digest,
                                 "load_ms": round(loaded.load_ns / 1e6, 1)})
        return True

    async def _activate(self, entry: ModelEntry, version: ModelVersion) -> None:
        old = entry.serving
        entry.serving = old.with_active(version, keep_previous=True)  # the swap
        if old.active is not version:
            version.activated_at = time.time()
            log.info("activated", extra={"model": entry.name, "version": version.number,
                                         "digest": version.digest})
        for dropped in [v for v in old.loaded.values() if entry.serving.role(v) is None]:
            await self._unload(dropped)
        await self._notify(entry)

    async def unload_model(self, model: str) -> None:
        """Stop serving a model: it leaves serving at once, then each version drains
        and is closed. Requests already running finish on their version."""
        entry = self.entry(model)
        async with entry.lock:
            old, entry.serving = entry.serving, ServingState.empty()
            await self._notify(entry)
            await asyncio.gather(*(self._unload(v) for v in old.loaded.values()))

    async def _unload(self, version: ModelVersion) -> None:
        version.phase = Phase.UNLOADING
        await version.drain()
        if version.loaded is not None:
            version.loaded.runner.close()
        version.loaded, version.phase = None, Phase.UNLOADED
        log.info("unloaded", extra={"model": version.model, "version": version.number})

    async def _notify(self, entry: ModelEntry) -> None:
        ready = entry.serving.active is not None
        for listener in self._listeners:
            await listener(entry.name, ready)

    async def close(self) -> None:
        """Unload everything (after the servers stopped taking calls)."""
        for name in list(self._models):
            await self.unload_model(name)
        self._load_pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries())
