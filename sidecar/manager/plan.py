"""What to do about one model after the repository changed: a pure function.

`plan` compares what the watcher saw on disk with what the manager serves and
returns actions; it does no I/O, so its rules are tested with tables:

- Only the *highest* version with a model file is a candidate, and only once it
  is complete: ten versions written in a burst activate just the newest, and a
  slow copy is never loaded half-written. A candidate that failed to load with
  these exact file bytes is skipped until the file changes; the next highest
  complete one is tried instead.
- A candidate at or below the model's watermark (the highest version already
  handled, e.g. one rolled back from) is never activated again by the watcher;
  if it is above the active version it is noted once, with how to activate it.
- A candidate above the model's watermark is new: the model's policy says
  activate, load (warm only) or ignore. A pinned model is never changed by the
  watcher: the skip is noted.
- A loaded version whose folder is gone: the active one keeps serving from
  memory (noted); a warm one is unloaded after it drains.
- A model folder that is gone: the model is unloaded after draining (pinned: it
  keeps serving, noted). A new model folder: its highest complete version is
  activated.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.source.watcher import FileState, VersionSeen


class Policy(enum.Enum):
    ACTIVATE = "activate"
    LOAD = "load"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the manager knows of a model, for planning."""

    known: bool = False  # the manager has an entry for it
    active: int = 0
    loaded: frozenset[int] = frozenset()
    pinned: bool = False
    watermark: int = 0
    unloaded: bool = False  # unloaded by a command: left alone


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # activate | load | unload-version | unload-model | note | wait
    version: int = 0
    reason: str = ""
    state: FileState | None = None  # the file bytes acted on (activate/load)


@dataclass(slots=True)
class Memory:
    """What the sync remembers between snapshots (not persisted)."""

    #: (model, version) -> file state that failed to load: not retried until it changes
    failed: dict[tuple[str, int], FileState] = field(default_factory=dict)
    #: notes already logged, so each is logged once
    noted: set[str] = field(default_factory=set)


def _candidate(name: str, seen: Mapping[int, VersionSeen], memory: Memory
               ) -> tuple[VersionSeen | None, bool]:
    """(the version to consider, whether the newest is still settling)."""
    for number in sorted(seen, reverse=True):
        version = seen[number]
        if version.state is None:
            continue  # a folder without a model file yet (or ever)
        if not version.complete:
            return None, True  # the newest is being written: wait for it
        if memory.failed.get((name, number)) == version.state:
            continue  # these bytes failed already; try the next one
        return version, False
    return None, False


def plan(name: str, seen: Mapping[int, VersionSeen] | None, facts: ModelFacts,
         policy: Policy, memory: Memory) -> list[Action]:
    if facts.unloaded:
        return []
    if seen is None:
        if not facts.known:
            return []
        if facts.pinned:
            return [Action("note", reason="model folder removed; pinned: it keeps serving")]
        return [Action("unload-model", reason="model folder removed from the repository")]
    actions: list[Action] = []
    for number in sorted(facts.loaded):
        if number in seen:
            continue
        if number == facts.active:
            actions.append(Action("note", number,
                                  "active version's folder removed; it keeps serving from"
                                  " memory"))
        else:
            actions.append(Action("unload-version", number,
                                  "version folder removed from the repository"))
    candidate, settling = _candidate(name, seen, memory)
    if settling:
        actions.append(Action("wait", reason="newest version is still being written"))
        return actions
    if candidate is None:
        return actions
    if candidate.number <= facts.watermark:
        if facts.known and candidate.number > facts.active \
                and candidate.number not in facts.loaded:
            actions.append(Action("note", candidate.number,
                                  f"version {candidate.number} is not activated automatically:"
                                  f" it is at or below the watermark {facts.watermark} (already"
                                  " handled, e.g. rolled back from); activate it by command"))
        return actions
    if candidate.number == facts.active:
        return actions
    if not facts.known:
        actions.append(Action("activate", candidate.number, "new model", candidate.state))
    elif facts.pinned:
        actions.append(Action("note", candidate.number,
                              "new version not activated: the model is pinned"))
    elif policy is Policy.IGNORE:
        actions.append(Action("note", candidate.number,
                              "new version ignored (policy: ignore)"))
    elif policy is Policy.LOAD:
        if candidate.number not in facts.loaded:
            actions.append(Action("load", candidate.number,
                                  "new version loaded warm (policy: load)", candidate.state))
    else:
        actions.append(Action("activate", candidate.number, "new version", candidate.state))
    return actions
