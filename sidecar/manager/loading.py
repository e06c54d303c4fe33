"""Loading and unloading versions, off the request path.

One load per version at a time (a second request for it awaits the first), in
a thread pool of its own so loads never occupy inference threads. Unloading
takes the version's session out at once (`begin_unload`) and closes it once
*that session* drained (`finish_unload`): a version loaded again meanwhile has
a new session, and its requests never hold the old one's drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sidecar.errors import ModelLoadError
from sidecar.loader.onnx import (
    FileIdentity,
    LoadedModel,
    SessionConfig,
    file_identity,
    one_line,
)
from sidecar.manager.servable import Servable
from sidecar.manager.version import ModelVersion, Phase
from sidecar.source.provenance import last_commit

log = logging.getLogger("sidecar.manager")

Loader = Callable[[Path, SessionConfig], LoadedModel]
#: How long a version's commit is trusted before `provenance` asks git again
#: (a commit can land without the file changing).
COMMIT_TTL_S = 5.0
#: Told (version, actor, reason) when a load fails.
FailureHook = Callable[[ModelVersion, str, str], Awaitable[None]]


class VersionLoading:
    def __init__(self, config: SessionConfig, loader: Loader, threads: int, *,
                 on_failure: FailureHook, quarantine: Mapping[str, str],
                 batching: Callable[[Servable], Any] | None = None) -> None:
        self._config = config
        #: gives a new session its dynamic batcher (None: it does not batch)
        self._batching = batching
        self._loader = loader
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="load")
        self._on_failure = on_failure
        self._quarantine = quarantine
        self._loading: dict[ModelVersion, asyncio.Task[bool]] = {}

    async def identify(self, version: ModelVersion) -> FileIdentity | None:
        """The file's identity (digest ...), recomputed only when its stat changed."""
        try:
            st = version.path.stat()
        except OSError:
            return version.identity if version.loaded else None
        known = version.identity
        if known and (known.size, known.mtime_ns, known.ctime_ns) == (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return known
        loop = asyncio.get_running_loop()
        try:
            version.identity = await loop.run_in_executor(self._pool, file_identity,
                                                          version.path)
        except (ModelLoadError, OSError):
            return None
        return version.identity

    async def provenance(self, version: ModelVersion) -> dict[str, str]:
        """The git commit that last changed the version's file ({}: none), asked of
        git in the load pool when the file changed or COMMIT_TTL_S passed."""
        try:
            st = version.path.stat()
            stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        except OSError:
            return version.commit
        if version.commit_stat == stat \
                and time.monotonic() - version.commit_read < COMMIT_TTL_S:
            return version.commit
        loop = asyncio.get_running_loop()
        commit = await loop.run_in_executor(self._pool, last_commit, version.path)
        version.commit = commit.as_dict() if commit is not None else {}
        version.commit_stat, version.commit_read = stat, time.monotonic()
        return version.commit

    async def ensure(self, version: ModelVersion, actor: str) -> bool:
        """Load and warm up a version unless it is READY; one load at a time per version.

        The load is a task of its own that every caller awaits through a shield: a
        caller that is cancelled (its client went away) never cancels the load, nor
        the other callers waiting for it (the watcher among them)."""
        if version.phase is Phase.READY:
            return True
        task = self._loading.get(version)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version, actor))
            self._loading[version] = task
            task.add_done_callback(lambda _: self._loading.pop(version, None))
        return await asyncio.shield(task)

    async def _load(self, version: ModelVersion, actor: str) -> bool:
        version.phase, version.reason = Phase.LOADING, ""
        log.info("loading", extra={"model": version.model, "version": version.number})
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._pool, self._loader, version.path,
                                                self._config)
        except Exception as exc:  # ModelLoadError, or an OSError the loader let through
            reason = str(exc) if isinstance(exc, ModelLoadError) else one_line(exc)
            version.phase, version.reason = Phase.FAILED, reason
            await self._on_failure(version, actor, reason)
            return False
        except BaseException:
            version.phase, version.reason = Phase.UNLOADED, ""  # cancelled: not loaded
            raise
        await self.provenance(version)
        servable = Servable(version, loaded)
        if self._batching is not None:
            servable.batcher = self._batching(servable)
        version.servable, version.identity = servable, loaded.identity
        version.loaded_at = time.time()
        version.phase = Phase.READY
        log.info("ready", extra={"model": version.model, "version": version.number,
                                 "digest": loaded.identity.digest,
                                 "load_ms": round(loaded.load_ns / 1e6, 1)})
        return True

    async def highest(self, versions: Mapping[int, ModelVersion], actor: str, *,
                      below: int | None = None, skip: ModelVersion | None = None
                      ) -> ModelVersion | None:
        """The highest version that loads (skipping FAILED and quarantined ones)."""
        for number in sorted(versions, reverse=True):
            version = versions[number]
            if (below is not None and number >= below) or version is skip:
                continue
            if version.phase is Phase.FAILED:
                continue
            identity = await self.identify(version)
            if identity is not None and identity.digest in self._quarantine:
                continue
            if await self.ensure(version, actor):
                return version
        return None

    def begin_unload(self, version: ModelVersion) -> Servable | None:
        """Mark a version that left serving as UNLOADING, at once (no await), and
        return the session to close once it drains. From here on, activating it
        again loads a fresh session instead of reusing this one."""
        if version.phase is not Phase.READY:
            return None
        version.phase, version.held = Phase.UNLOADING, False
        log.info("unloading", extra={"model": version.model, "version": version.number,
                                     "inflight": version.inflight})
        return version.servable

    async def finish_unload(self, version: ModelVersion, leaving: Servable | None, *,
                            within: float | None = None) -> None:
        """Wait for the session `begin_unload` took to drain (at most `within`
        seconds), then close it."""
        if leaving is None:
            return
        drained = await leaving.drained(within)
        leaving.close()
        if version.servable is leaving:  # not loaded again while it drained
            version.servable, version.phase = None, Phase.UNLOADED
        log.info("unloaded", extra={"model": version.model, "version": version.number,
                                    **({} if drained else {"forced_after_s": within})})

    async def unload(self, version: ModelVersion) -> None:
        """Close a version that left the serving state, once it has drained."""
        await self.finish_unload(version, self.begin_unload(version))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
