"""Apply what the watcher sees to the manager, model by model, as actor `watcher`.

For each snapshot, each model's actions come from the pure `plan`; this module
carries them out through the manager's commands (so every change is the same
swap, persisted and logged like a command's) and records a reason for every
skip. A version that fails to load is remembered with its file bytes and
retried only when the file changes; the next lower complete version is tried
at once instead. Models are synced in parallel, each one's actions in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from sidecar.errors import FailedPreconditionError, NotFoundError, UnavailableError
from sidecar.manager.manager import ModelManager
from sidecar.manager.plan import Action, Memory, Policy, plan
from sidecar.manager.version import Phase
from sidecar.source.policy import read_policy
from sidecar.source.watcher import Snapshot, VersionSeen, file_state

log = logging.getLogger("sidecar.sync")

ACTOR = "watcher"
_MAX_ATTEMPTS = 16  # candidates tried for one model in one snapshot


class RepositorySync:
    def __init__(self, manager: ModelManager, repository: Path, *, default_policy: str,
                 on_model: Callable[[str], dict[str, str]] | None = None) -> None:
        self._manager = manager
        #: told each synced model; returns the settings that changed (the guard's)
        self._on_model = on_model
        self._repository = repository
        self._default = default_policy
        self.memory = Memory()
        self._seed()

    def _seed(self) -> None:
        """Versions that failed at startup failed for their current bytes."""
        for entry in self._manager.entries():
            for number, version in entry.versions.items():
                state = file_state(version.path) if version.phase is Phase.FAILED else None
                if state is not None:
                    self.memory.failed[(entry.name, number)] = state

    async def apply(self, snapshot: Snapshot) -> None:
        names = set(snapshot.models) | {e.name for e in self._manager.entries()}
        for name in snapshot.unreadable:  # one bad folder is that model's problem only
            names.discard(name)
            await self._note_once(name, 0, "model folder cannot be read; left as it is"
                                  " until it can")
        await asyncio.gather(*(self._sync_model(n, snapshot.models.get(n)) for n in names))

    async def _sync_model(self, name: str, seen: dict[int, VersionSeen] | None) -> None:
        policy_name, problem = read_policy(self._repository / name, self._default)
        if problem:
            await self._note_once(name, 0, problem)
        for _ in range(_MAX_ATTEMPTS):
            actions = plan(name, seen, self._manager.facts(name), Policy(policy_name),
                           self.memory)
            retry = False
            for action in actions:
                retry = await self._carry_out(name, action) or retry
            if not retry:
                break
        if self._on_model is not None and self._manager.has_model(name):
            changed = self._on_model(name)
            if changed:
                await self._manager.note(name, "guard-settings", actor=ACTOR, details=changed,
                                         reason="guard settings changed in the model's file")

    async def _carry_out(self, name: str, action: Action) -> bool:
        """Do one action; True if the model should be planned again at once."""
        manager, v = self._manager, action.version
        try:
            if action.kind == "activate":
                await manager.activate(name, str(v), actor=ACTOR, reason=action.reason)
                await manager.raise_watermark(name, v)
            elif action.kind == "load":
                await manager.load(name, str(v), actor=ACTOR, reason=action.reason)
                await manager.raise_watermark(name, v)
            elif action.kind == "unload-version":
                await manager.unload(name, str(v), actor=ACTOR, reason=action.reason)
            elif action.kind == "unload-model":
                await manager.forget(name, actor=ACTOR, reason=action.reason)
            elif action.kind == "note":
                await self._note_once(name, v, action.reason)
                if v:
                    await manager.raise_watermark(name, v)
        except (UnavailableError, FailedPreconditionError) as exc:
            # Not loadable (FAILED with its reason, logged by the manager), or refused
            # (incompatible, quarantined): skip these bytes until the file changes.
            if action.state is not None:
                self.memory.failed[(name, v)] = action.state
            if isinstance(exc, FailedPreconditionError):
                await manager.note(name, "watch-skipped", actor=ACTOR, reason=str(exc),
                                   version=v)
            return True
        except NotFoundError:
            return False  # gone meanwhile: the next snapshot says what is there
        return False

    async def _note_once(self, name: str, version: int, reason: str) -> None:
        key = f"{name}\0{version}\0{reason}"
        if key in self.memory.noted:
            return
        self.memory.noted.add(key)
        await self._manager.note(name, "watch-note", actor=ACTOR, reason=reason,
                                 version=version)
