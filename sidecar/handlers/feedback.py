"""Feedback (ground truth for answers given), transport-free.

`send` joins one item's truth with what each version answered for its id
(see sidecar/quality/engine.py) and raises the engine's errors (unknown
model, a model without quality settings, a truth that does not fit).
A stream of items is summed up in a `StreamSummary`: an item that fails
counts as invalid, with its reason among the first few kept, and never
stops the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.errors import SidecarError
from sidecar.handlers.types import InferInput
from sidecar.quality.engine import MATCHED, FeedbackResult, QualityEngine

#: Invalid items whose reasons a stream's summary keeps.
MAX_ERRORS = 16


@dataclass(slots=True)
class FeedbackItem:
    model: str
    request_id: str
    truth: list[InferInput]
    reward: float | None = None


@dataclass(frozen=True, slots=True)
class ItemError:
    index: int  # position in the stream, from 0
    request_id: str
    reason: str


@dataclass(slots=True)
class StreamSummary:
    received: int = 0
    matched: int = 0
    unmatched: int = 0
    invalid: int = 0
    paired: int = 0
    errors: list[ItemError] = field(default_factory=list)

    def add(self, result: FeedbackResult) -> None:
        self.received += 1
        if result.outcome == MATCHED:
            self.matched += 1
            self.paired += 1 if result.paired else 0
        else:
            self.unmatched += 1

    def refuse(self, request_id: str, reason: str) -> None:
        """One item that could not be used (its error's message as the reason)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(ItemError(self.received, request_id[:200], reason))
        self.received += 1
        self.invalid += 1


class FeedbackPlane:
    def __init__(self, engine: QualityEngine) -> None:
        self._engine = engine

    def send(self, item: FeedbackItem) -> FeedbackResult:
        return self._engine.feedback(item.model, item.request_id, item.truth, item.reward)

    def refused(self, model: str) -> None:
        """An item for `model` whose truth did not decode (counted invalid)."""
        self._engine.refused(model)

    def send_into(self, summary: StreamSummary, item: FeedbackItem) -> None:
        """One item of a stream: its outcome, or its error, counted in `summary`."""
        try:
            result = self.send(item)
        except SidecarError as exc:
            summary.refuse(item.request_id, str(exc))
        else:
            summary.add(result)
