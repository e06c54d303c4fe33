"""What to do about one model after the repository changed: a pure function.

`plan` compares what the watcher saw on disk with what the manager serves and
returns actions; it does no I/O, so its rules are tested with tables. The
repository is the desired state (docs/gitops.md):

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
- The active version's folder or file is gone (a `git revert`, a sync root
  moved to an older commit): roll back to the best remaining version, the warm
  previous one first, then another loaded one, then the highest complete one
  on disk; the watermark comes down to the highest number left, so the version
  is new again if it comes back. A warm version whose folder is gone is
  unloaded after it drains.
- A loaded version whose file now holds other bytes (a force-push, an edit) is
  a new candidate for its number: replaced (loaded, checked, swapped into its
  role) once complete; for the active version only under the `activate` policy
  or a declaration by number.
- `"serve"` in sidecar.json (a version number or digest) declares what serves.
  A declaration is applied when it changes (edge-triggered): a command or the
  guard may move away from it afterwards, and the conflict is shown. Removing
  it serves the newest complete version again. A pin wins until unpinned.
- A model folder that is gone: the model is unloaded after draining (pinned: it
  keeps serving, noted). A new model folder: its declared version, else its
  highest complete version, is activated.
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
    previous: int = 0
    #: The `serve` declaration last applied ("": none)
    declared: str = ""
    #: Loaded versions whose (complete) file on disk now holds other bytes
    rewritten: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Declaration:
    """What the model's sidecar.json declares with `serve` ("": nothing)."""

    text: str = ""  # normalised: a version number, or a lower-case digest (prefix)
    number: int = 0  # the version on disk it names (0: none found)
    problem: str = ""  # why it names no version on disk now
    by_digest: bool = False


NO_DECLARATION = Declaration()


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # activate | load | replace | unload-version | unload-model | note | wait | declare
    version: int = 0
    reason: str = ""
    state: FileState | None = None  # the file bytes acted on (activate/load/replace)
    #: After success, record this as the applied declaration (None: leave it)
    declare: str | None = None
    #: After success, set the watermark to this (0: raise it to `version`)
    watermark: int = 0


@dataclass(slots=True)
class Memory:
    """What the sync remembers between snapshots (not persisted)."""

    #: (model, version) -> file state that failed to load: not retried until it changes
    failed: dict[tuple[str, int], FileState] = field(default_factory=dict)
    #: notes already logged, so each is logged once
    noted: set[str] = field(default_factory=set)


def _usable(name: str, seen: Mapping[int, VersionSeen], memory: Memory, number: int) -> bool:
    version = seen.get(number)
    return (version is not None and version.state is not None and version.complete
            and not version.vanishing and memory.failed.get((name, number)) != version.state)


def _candidate(name: str, seen: Mapping[int, VersionSeen], memory: Memory
               ) -> tuple[VersionSeen | None, bool]:
    """(the version to consider, whether the newest is still settling)."""
    for number in sorted(seen, reverse=True):
        version = seen[number]
        if version.state is None or version.vanishing:
            continue  # a folder without a model file yet (or ever), or one going away
        if not version.complete:
            return None, True  # the newest is being written: wait for it
        if memory.failed.get((name, number)) == version.state:
            continue  # these bytes failed already; try the next one
        return version, False
    return None, False


def plan(name: str, seen: Mapping[int, VersionSeen] | None, facts: ModelFacts,
         policy: Policy, memory: Memory, declared: Declaration = NO_DECLARATION
         ) -> list[Action]:
    if facts.unloaded:
        return []
    if seen is None:
        if not facts.known:
            return []
        if facts.pinned:
            return [Action("note", reason="model folder removed; pinned: it keeps serving")]
        return [Action("unload-model", reason="model folder removed from the repository")]
    if not facts.known:
        return _new_model(name, seen, memory, declared)
    present = {n for n, v in seen.items() if v.state is not None}
    actions: list[Action] = []
    for number in sorted(facts.loaded):
        if number not in present and number != facts.active:
            actions.append(Action("unload-version", number,
                                  "version folder removed from the repository"))
    actions += _replacements(name, seen, facts, policy, memory, declared)
    active_gone = bool(facts.active) and facts.active not in present
    if declared.text or facts.declared:
        moves = _declared(name, seen, facts, memory, declared)
        if any(a.kind == "activate" for a in moves):
            return actions + moves
        actions += moves
        if active_gone:
            actions += _retreat(name, seen, facts, memory, present)
        return actions
    if active_gone:
        return actions + _retreat(name, seen, facts, memory, present)
    return actions + _newest(name, seen, facts, policy, memory)


def _new_model(name: str, seen: Mapping[int, VersionSeen], memory: Memory,
               declared: Declaration) -> list[Action]:
    if declared.number and _usable(name, seen, memory, declared.number):
        return [Action("activate", declared.number,
                       f"new model, serving the declared version (serve: {declared.text})",
                       seen[declared.number].state, declare=declared.text)]
    candidate, settling = _candidate(name, seen, memory)
    if settling:
        return [Action("wait", reason="newest version is still being written")]
    if candidate is None:
        return []
    return [Action("activate", candidate.number, "new model", candidate.state)]


def _replacements(name: str, seen: Mapping[int, VersionSeen], facts: ModelFacts,
                  policy: Policy, memory: Memory, declared: Declaration) -> list[Action]:
    """Loaded versions whose file holds other bytes now."""
    actions: list[Action] = []
    for number in sorted(facts.rewritten & facts.loaded):
        if not _usable(name, seen, memory, number):
            continue  # still being written, or these bytes failed already
        state = seen[number].state
        what = f"version {number}'s file changed (new bytes)"
        if facts.pinned:
            actions.append(Action("note", number, f"{what}; pinned: the loaded bytes keep"
                                  " serving"))
        elif number != facts.active:
            actions.append(Action("replace", number, f"{what}: the loaded copy is replaced",
                                  state))
        elif declared.by_digest:
            actions.append(Action("note", number, f"{what}; sidecar.json declares digest"
                                  f" {declared.text[:12]}: the loaded bytes keep serving"))
        elif declared.number == number or policy is Policy.ACTIVATE:
            actions.append(Action("replace", number, f"{what}: the new bytes serve", state))
        else:
            actions.append(Action("note", number, f"{what}; not served (policy:"
                                  f" {policy.value}): the loaded bytes keep serving"))
    return actions


def _declared(name: str, seen: Mapping[int, VersionSeen], facts: ModelFacts,
              memory: Memory, declared: Declaration) -> list[Action]:
    """What a `serve` declaration (or its removal) asks for."""
    text = declared.text
    if facts.pinned:
        if text != facts.declared:
            return [Action("note", reason=f"sidecar.json declares serve:"
                           f" {text or '(removed)'}; the model is pinned: applied once"
                           " unpinned")]
        return []
    if not text:  # the declaration was removed: the newest complete version serves
        candidate, settling = _candidate(name, seen, memory)
        if settling:
            return [Action("wait", reason="newest version is still being written")]
        why = "serve removed from sidecar.json"
        if candidate is None or candidate.number == facts.active:
            return [Action("declare", facts.active, f"{why}: the newest version serves",
                           declare="")]
        return [Action("activate", candidate.number, f"{why}: the newest version serves",
                       candidate.state, declare="")]
    newest, _ = _candidate(name, seen, memory)
    notes: list[Action] = []
    if newest is not None and newest.number > facts.watermark \
            and newest.number != declared.number:
        notes.append(Action("note", newest.number,
                            f"version {newest.number} not activated: sidecar.json declares"
                            f" serve: {text}"))
    notes.append(_toward(name, seen, facts, memory, declared))
    return [a for a in notes if a.kind != "none"]


def _toward(name: str, seen: Mapping[int, VersionSeen], facts: ModelFacts, memory: Memory,
            declared: Declaration) -> Action:
    """The one step toward a declared version ("none": nothing to do)."""
    text = declared.text
    if declared.problem or not declared.number:
        return Action("note", reason=declared.problem
                      or f"serve: {text} names no version on disk")
    number = declared.number
    version = seen.get(number)
    if version is None or version.state is None or version.vanishing:
        return Action("note", reason=f"serve: {text}: version {number} is not on disk")
    if not version.complete:
        return Action("wait", reason=f"declared version {number} is still being written")
    if memory.failed.get((name, number)) == version.state or text == facts.declared:
        return Action("none")  # failed (noted then), or applied already: a local decision stands
    if number == facts.active:
        return Action("declare", number, f"sidecar.json declares serve: {text}; already"
                      " serving it", declare=text)
    return Action("activate", number, f"declared in sidecar.json (serve: {text})",
                  version.state, declare=text)


def _retreat(name: str, seen: Mapping[int, VersionSeen], facts: ModelFacts, memory: Memory,
             present: set[int]) -> list[Action]:
    """The active version's folder or file is gone: roll back to the best one left."""
    gone = facts.active
    if facts.pinned:
        return [Action("note", gone, "active version's folder removed; pinned: it keeps"
                       " serving from memory")]
    order: list[int] = []
    if facts.previous and _usable(name, seen, memory, facts.previous):
        order.append(facts.previous)
    order += sorted((n for n in facts.loaded if n != gone and n not in order
                     and _usable(name, seen, memory, n)), reverse=True)
    order += sorted((n for n in present if n not in order and _usable(name, seen, memory, n)),
                    reverse=True)
    if not order:
        if any(not seen[n].complete for n in present):
            return [Action("wait", reason="active version removed; the next one is still"
                           " being written")]
        return [Action("note", gone, f"active version {gone} removed from the repository;"
                       " no other version can serve: it keeps serving from memory")]
    target = order[0]
    return [Action("activate", target, f"active version {gone} removed from the repository:"
                   f" rolled back to version {target}", seen[target].state,
                   watermark=max(1, min(facts.watermark or target, max(present)))),
            Action("unload-version", gone, "version folder removed from the repository")]


def _newest(name: str, seen: Mapping[int, VersionSeen], facts: ModelFacts, policy: Policy,
            memory: Memory) -> list[Action]:
    """A version above the watermark, by the model's policy."""
    candidate, settling = _candidate(name, seen, memory)
    if settling:
        return [Action("wait", reason="newest version is still being written")]
    if candidate is None:
        return []
    if candidate.number <= facts.watermark:
        if candidate.number > facts.active and candidate.number not in facts.loaded:
            return [Action("note", candidate.number,
                           f"version {candidate.number} is not activated automatically:"
                           f" it is at or below the watermark {facts.watermark} (already"
                           " handled, e.g. rolled back from); activate it by command")]
        return []
    if candidate.number == facts.active:
        return []
    if facts.pinned:
        return [Action("note", candidate.number,
                       "new version not activated: the model is pinned")]
    if policy is Policy.IGNORE:
        return [Action("note", candidate.number, "new version ignored (policy: ignore)")]
    if policy is Policy.LOAD:
        if candidate.number not in facts.loaded:
            return [Action("load", candidate.number,
                           "new version loaded warm (policy: load)", candidate.state)]
        return []
    return [Action("activate", candidate.number, "new version", candidate.state)]
