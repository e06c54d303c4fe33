"""What each version answered for recent request ids, per model, until truth comes.

`remember` is on the inference request path: O(1), no allocation beyond one
small dict and tuple per new id, and amortised constant eviction. Per model,
an id is kept until `max_ids` newer ids of that model have been remembered or
it is older than `max_age_s` (by its first answer), whichever comes first; so
memory is bounded by max_ids entries per model (plus the answers' own size:
a few rows of labels or scores each, more for regression outputs).

Several versions may answer the same id (the active one, and the previous
one through the shadow mirror); each version's first answer is kept. `take`
hands over all of them and forgets the id, so a truth counts once: a second
feedback for the same id finds nothing. The mirror adds its answer with
`join`, which keeps nothing for an id no longer held (its truth came first,
or it expired), so the first answer of an entry is always the one the client
got.

Not thread-safe, by design (a lock would double remember's cost): every call
must come from the event loop's thread. The shadow worker runs its copies in
a thread but hands their answers over on the loop (it awaits them there).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.quality.score import Answer

#: (when first answered, version -> answer)
_Entry = tuple[float, dict[int, Answer]]


@dataclass(slots=True)
class MemoryCounts:
    """One model's figures: ids held now, and totals since start."""

    held: int = 0
    remembered: int = 0  # new ids
    taken: int = 0  # take() that found the id
    missed: int = 0  # take() that did not (unknown, expired, or taken before)
    evicted: int = 0  # ids dropped unmatched, by count or age


@dataclass(slots=True)
class _ModelMemory:
    answers: dict[str, _Entry] = field(default_factory=dict)
    order: deque[tuple[str, _Entry]] = field(default_factory=deque)  # oldest first
    counts: MemoryCounts = field(default_factory=MemoryCounts)


class AnswerMemory:
    __slots__ = ("_clock", "_models", "max_age_s", "max_ids")

    def __init__(self, max_ids: int = 100_000, max_age_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_ids < 1 or not max_age_s > 0:
            raise ValueError("max_ids must be at least 1 and max_age_s positive")
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self._clock = clock
        self._models: dict[str, _ModelMemory] = {}

    def remember(self, model: str, request_id: str, version: int, answer: Answer) -> None:
        """Note what `version` answered for `request_id` (ignored if the id is empty)."""
        if not request_id:
            return
        memory = self._models.get(model)
        if memory is None:
            memory = self._models[model] = _ModelMemory()
        now = self._clock()
        order = memory.order
        if order and order[0][1][0] < now - self.max_age_s:
            self._expire(memory, now)
        entry = memory.answers.get(request_id)
        if entry is not None:
            entry[1].setdefault(version, answer)
            return
        entry = (now, {version: answer})
        memory.answers[request_id] = entry
        order.append((request_id, entry))
        memory.counts.remembered += 1
        if len(order) > self.max_ids:
            old_id, old = order.popleft()
            if memory.answers.get(old_id) is old:
                del memory.answers[old_id]
                memory.counts.evicted += 1

    def join(self, model: str, request_id: str, version: int, answer: Answer) -> bool:
        """Add `version`'s answer to an id still held (the mirrored copy's answer);
        False, and nothing kept, if the id is unknown, expired or already taken: an
        answer no truth can meet any more is not worth its memory."""
        memory = self._models.get(model)
        entry = memory.answers.get(request_id) if memory is not None else None
        if entry is None or entry[0] < self._clock() - self.max_age_s:
            return False
        entry[1].setdefault(version, answer)
        return True

    def peek(self, model: str, request_id: str) -> dict[int, Answer] | None:
        """Every version's answer for the id, kept (None if unknown or expired)."""
        memory = self._models.get(model)
        entry = memory.answers.get(request_id) if memory is not None and request_id else None
        if entry is None or entry[0] < self._clock() - self.max_age_s:
            return None
        return entry[1]

    def take(self, model: str, request_id: str) -> dict[int, Answer] | None:
        """Every version's answer for the id, forgetting it; None if unknown or expired."""
        memory = self._models.get(model)
        if memory is None or not request_id:
            return None
        entry = memory.answers.pop(request_id, None)
        if entry is None or entry[0] < self._clock() - self.max_age_s:
            memory.counts.missed += 1
            if entry is not None:
                memory.counts.evicted += 1
            return None
        memory.counts.taken += 1
        return entry[1]

    def _expire(self, memory: _ModelMemory, now: float) -> None:
        order, answers, oldest = memory.order, memory.answers, now - self.max_age_s
        while order and order[0][1][0] < oldest:
            old_id, old = order.popleft()
            if answers.get(old_id) is old:
                del answers[old_id]
                memory.counts.evicted += 1

    def forget(self, model: str) -> None:
        """Drop everything remembered for `model` (it was unloaded)."""
        self._models.pop(model, None)

    def counts(self, model: str) -> MemoryCounts:
        """The model's figures (a copy), with ids held now (expired ones dropped first)."""
        memory = self._models.get(model)
        if memory is None:
            return MemoryCounts()
        self._expire(memory, self._clock())
        c = memory.counts
        return MemoryCounts(len(memory.answers), c.remembered, c.taken, c.missed, c.evicted)

    def held(self) -> dict[str, int]:
        """Ids held per model (expired ones not yet dropped included)."""
        return {model: len(memory.answers) for model, memory in self._models.items()}

    def __len__(self) -> int:
        """Ids held, all models (expired ones not yet dropped included)."""
        return sum(len(memory.answers) for memory in self._models.values())
