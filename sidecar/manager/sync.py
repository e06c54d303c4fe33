"""Apply what the watcher sees to the manager, model by model, as actor `watcher`.

For each snapshot, each model's actions come from the pure `plan`; this module
gathers what the plan needs that takes I/O (the model's `serve` declaration,
resolved to a version on disk; which loaded versions' files now hold other
bytes, by digest, hashed off the loop and only when a file's stat changed),
carries the actions out through the manager's commands (so every change is
the same swap, persisted and logged like a command's) and records a reason
for every skip. A version that fails to load is remembered with its file
bytes and retried only when the file changes; the next candidate is planned
at once instead. Models are synced in parallel, each one's actions in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sidecar.errors import (
    FailedPreconditionError,
    FleetConflictError,
    FleetUnavailableError,
    InvalidInputError,
    ModelLoadError,
    NotFoundError,
    UnavailableError,
)
from sidecar.loader.onnx import file_identity
from sidecar.manager.entry import ModelEntry
from sidecar.manager.fleethook import ADOPTED
from sidecar.manager.manager import ModelManager
from sidecar.manager.plan import Action, Declaration, Memory, Policy, plan
from sidecar.manager.refs import MIN_DIGEST_PREFIX
from sidecar.manager.version import Phase
from sidecar.source.policy import read_declaration, read_policy
from sidecar.source.repository import parse_version
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
        #: the last conflict announced per model (an event when it changes)
        self._conflicts: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        manager.add_swap_hook(self._swapped)
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
        declared_text, problem = read_declaration(self._repository / name)
        if problem:
            await self._note_once(name, 0, problem)
        if self._manager.has_model(name):
            entry = self._manager.entry(name)
            entry.declaring = declared_text
            if entry.declared == ADOPTED:  # adopted from the fleet: its decision stands
                await self._manager.set_declared(name, declared_text)
        refused = ""
        for _ in range(_MAX_ATTEMPTS):
            facts = self._manager.facts(name)
            declared = await self._resolve(name, declared_text, seen)
            if seen is not None and facts.known:
                facts = replace(facts, rewritten=await self._rewritten(name, seen))
            actions = plan(name, seen, facts, Policy(policy_name), self.memory, declared)
            # a new model's digest declaration resolves once the model exists: plan again
            retry = bool(declared.problem and not facts.known and actions)
            for action in actions:
                outcome = await self._carry_out(name, action)
                if outcome and action.declare is not None:
                    refused = outcome
                if outcome and action.state is not None:
                    retry = True  # these bytes are skipped now: plan the next candidate
                    break
            if not retry:
                break
        await self._record_declaration(name, declared_text, refused)
        if self._on_model is not None and self._manager.has_model(name):
            changed = self._on_model(name)
            if changed:
                await self._manager.note(name, "guard-settings", actor=ACTOR, details=changed,
                                         reason="guard settings changed in the model's file")

    async def _resolve(self, name: str, text: str, seen: dict[int, VersionSeen] | None
                       ) -> Declaration:
        """The declaration with the version on disk it names (digests by hashing the
        model's files, off the loop, each only when its stat changed)."""
        if not text:
            return Declaration()
        number = parse_version(text)
        if number is not None and len(text) < MIN_DIGEST_PREFIX:
            return Declaration(text, number)
        if not self._manager.has_model(name):
            return await self._resolve_on_disk(text, seen)
        entry = self._manager.entry(name)
        try:
            version = await self._manager.resolve(entry, text)
        except (NotFoundError, InvalidInputError) as exc:
            return Declaration(text, problem=f"serve: {exc}", by_digest=True)
        if seen is not None and version.number in seen and seen[version.number].vanishing:
            return Declaration(text, problem=f"serve: digest {text[:12]} is going away",
                               by_digest=True)
        return Declaration(text, version.number, by_digest=True)

    @staticmethod
    async def _resolve_on_disk(text: str, seen: dict[int, VersionSeen] | None) -> Declaration:
        """A digest declared by a model the manager does not know yet: hash its
        complete version files (off the loop) to find the one it names."""
        matches = []
        for number, disk in sorted((seen or {}).items()):
            if disk.state is None or not disk.complete or disk.vanishing:
                continue
            try:
                identity = await asyncio.to_thread(file_identity, disk.path)
            except (ModelLoadError, OSError):
                continue
            if identity.digest.startswith(text):
                matches.append(number)
        if len(matches) == 1:
            return Declaration(text, matches[0], by_digest=True)
        why = "matches no version on disk" if not matches else "matches several versions"
        return Declaration(text, problem=f"serve: digest {text[:12]} {why}", by_digest=True)

    async def _rewritten(self, name: str, seen: dict[int, VersionSeen]) -> frozenset[int]:
        """Loaded versions whose complete file on disk holds other bytes than the
        loaded session (a stat change alone, as a git-sync swap makes, is not one)."""
        entry = self._manager.entry(name)
        found = set()
        for number, version in entry.serving.loaded.items():
            disk = seen.get(number)
            servable = version.servable
            if disk is None or disk.state is None or not disk.complete or disk.vanishing \
                    or servable is None:
                continue
            identity = await self._manager.identify(version)
            if identity is not None and identity.digest != servable.digest:
                found.add(number)
        return frozenset(found)

    async def _record_declaration(self, name: str, text: str, refused: str) -> None:
        """Remember what the model's file declares and why applying it was refused."""
        if not self._manager.has_model(name):
            return
        entry = self._manager.entry(name)
        entry.declaring, entry.refusal = text, refused if text else ""
        await self._announce(name)

    def _swapped(self, entry: ModelEntry, before: object, actor: str) -> None:
        """After any change of what serves (a command, the guard): a declaration the
        pod no longer follows is announced."""
        if entry.declaring and actor != ACTOR:
            task = asyncio.get_running_loop().create_task(self._announce(entry.name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _announce(self, name: str) -> None:
        """An event when the conflict between sidecar.json and what serves changes."""
        if not self._manager.has_model(name):
            return
        conflict = self._manager.entry(name).conflict(self._manager.quarantine)
        if conflict == self._conflicts.get(name, ""):
            return
        self._conflicts[name] = conflict
        if conflict:
            log.warning("declaration not served", extra={"model": name, "reason": conflict})
            await self._manager.note(name, "declaration-conflict", actor=ACTOR,
                                     reason=conflict)

    async def _carry_out(self, name: str, action: Action) -> str:
        """Do one action; a non-empty text (why it failed) if the model should be
        planned again at once."""
        manager, v = self._manager, action.version
        try:
            if action.kind == "activate":
                await manager.activate(name, str(v), actor=ACTOR, reason=action.reason)
                if action.watermark:
                    await manager.set_watermark(name, action.watermark)
                else:
                    await manager.raise_watermark(name, v)
            elif action.kind == "replace":
                await manager.replace(name, v, actor=ACTOR, reason=action.reason)
            elif action.kind == "declare":
                await manager.note(name, "declared", actor=ACTOR, reason=action.reason,
                                   version=v)
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
        except FleetConflictError:
            return ""  # another replica changed the model first: the fleet converges us
        except FleetUnavailableError as exc:
            # not refused: the fleet's store is down; tried again at the next snapshot
            await self._note_once(name, v, f"waiting for the fleet's store: {exc}")
            return ""
        except (UnavailableError, FailedPreconditionError) as exc:
            # Not loadable (FAILED with its reason, logged by the manager), or refused
            # (incompatible, quarantined): skip these bytes until the file changes.
            if action.state is not None:
                self.memory.failed[(name, v)] = action.state
            if isinstance(exc, FailedPreconditionError):
                await manager.note(name, "watch-skipped", actor=ACTOR, reason=str(exc),
                                   version=v)
            return str(exc) or type(exc).__name__
        except NotFoundError:
            return ""  # gone meanwhile: the next snapshot says what is there
        if action.declare is not None:
            await manager.set_declared(name, action.declare)
        return ""

    async def _note_once(self, name: str, version: int, reason: str) -> None:
        key = f"{name}\0{version}\0{reason}"
        if key in self.memory.noted:
            return
        self.memory.noted.add(key)
        await self._manager.note(name, "watch-note", actor=ACTOR, reason=reason,
                                 version=version)
