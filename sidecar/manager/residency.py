"""What stays loaded, and the retirement of what does not.

- The warm budget (`--warm-versions`): the active version plus the most
  recently active ones (the previous first) stay loaded.
- Versions loaded by `load` (or the watcher's `load` policy) are *held*: kept
  beyond the warm budget, but at most `--max-loaded` versions of a model are
  loaded at once (active, previous and a candidate always stay); the oldest
  held ones go first.
- A version that leaves the serving state is marked UNLOADING at once and its
  session is closed in the background once it drained, so no command holds a
  model's lock while old requests finish. At shutdown every drain is bounded.
"""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from sidecar.manager.entry import ModelEntry
from sidecar.manager.loading import VersionLoading
from sidecar.manager.servable import Servable
from sidecar.manager.version import ModelVersion, Phase

#: A version taken out of serving, with the session to close once it drained.
Leaving = tuple[ModelVersion, "Servable | None"]


class Residency:
    def __init__(self, loading: VersionLoading, *, warm_versions: int, max_loaded: int) -> None:
        self._loading = loading
        self.warm_versions = max(1, warm_versions)
        self.max_loaded = max(self.warm_versions, max_loaded)
        #: background drains, with the session each one will close
        self._retiring: dict[asyncio.Task[None], Servable | None] = {}

    def evict(self, entry: ModelEntry) -> list[ModelVersion]:
        """Take what is beyond the budgets out of the serving state (under the
        model's lock) and return it, for `retire` once the change is durable."""
        serving = entry.serving
        fixed = [v for v in (serving.active, serving.canary, serving.shadow) if v is not None]
        others = [v for v in serving.loaded.values()
                  if v not in fixed and v is not serving.previous]
        warm = sorted((v for v in others if not v.held), key=lambda v: v.deactivated_at,
                      reverse=True)
        previous = [serving.previous] if serving.previous not in (None, *fixed) else []
        ranked = [v for v in previous + warm if v is not None]
        budget = self.warm_versions - 1
        keep, drop = ranked[:budget], ranked[budget:]
        held = sorted((v for v in others if v.held), key=lambda v: v.loaded_at, reverse=True)
        room = max(0, self.max_loaded - len(set(fixed)) - len(keep))
        drop += held[room:]
        if drop:
            loaded = {n: v for n, v in serving.loaded.items() if v not in drop}
            previous_kept = serving.previous if serving.previous not in drop else None
            entry.serving = serving.but(previous=previous_kept, loaded=MappingProxyType(loaded))
        return drop

    def take_out(self, versions: list[ModelVersion]) -> list[Leaving]:
        """Mark versions that left serving UNLOADING, at once (under the model's
        lock: a command after this one loads a fresh session for them)."""
        return [(v, self._loading.begin_unload(v)) for v in versions]

    @staticmethod
    def put_back(taken: list[Leaving]) -> None:
        """Undo `take_out` (the change that took them out was not saved)."""
        for version, servable in taken:
            if servable is not None and version.servable is servable \
                    and version.phase is Phase.UNLOADING:
                version.phase = Phase.READY

    def finish(self, taken: list[Leaving]) -> list[asyncio.Task[None]]:
        """Drain and close sessions taken out, in the background (the tasks)."""
        tasks = []
        for version, leaving in taken:
            task = asyncio.get_running_loop().create_task(
                self._loading.finish_unload(version, leaving))
            self._retiring[task] = leaving
            task.add_done_callback(self._forget)
            tasks.append(task)
        return tasks

    def retire(self, versions: list[ModelVersion]) -> None:
        """Take out, then drain and close in the background."""
        self.finish(self.take_out(versions))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)

    async def retired(self, within: float | None = None) -> bool:
        """Wait until retiring versions have drained and closed (False: timed out)."""
        if not self._retiring:
            return True
        _, pending = await asyncio.wait(set(self._retiring), timeout=within)
        return not pending

    async def close(self, entries: list[ModelEntry], grace: float) -> None:
        """Unload everything at shutdown: each drain waits at most `grace` seconds,
        then the session is closed anyway (the servers have stopped by then)."""
        leaving: list[Leaving] = []
        for entry in entries:
            versions = list(entry.serving.loaded.values())
            entry.serving = entry.serving.empty()
            leaving += self.take_out(versions)
        await asyncio.gather(*(self._loading.finish_unload(v, s, within=grace)
                               for v, s in leaving))
        if not await self.retired(grace):
            stuck = dict(self._retiring)
            for task, servable in stuck.items():
                task.cancel()
                if servable is not None:
                    servable.close()
            await asyncio.gather(*stuck, return_exceptions=True)
