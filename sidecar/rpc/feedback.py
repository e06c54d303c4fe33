"""Servicer of `sidecar.feedback.v1.Feedback`: unpack the truth, call the handler, pack.

Truth tensors travel exactly as ModelInfer's inputs (typed `contents`, or
`raw_truth_contents` in the order of `truth`; mixing the two is refused) and
are decoded with the same checks (datatype, shape, size), at once: truth is
small. Send answers an item's error as its status (the one map in errors.py);
SendStream counts an item's error as invalid, keeps the first reasons, and
goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from sidecar.datatypes import KNOWN_DATATYPES, NUMPY_DTYPES
from sidecar.errors import InvalidInputError, SidecarError
from sidecar.handlers.feedback import FeedbackItem, FeedbackPlane, StreamSummary
from sidecar.handlers.types import InferInput
from sidecar.quality.engine import MATCHED, FeedbackResult
from sidecar.rpc.codec import check_shape, decode_raw
from sidecar.rpc.converters import decode_typed, typed_values
from sidecar.rpc.decoding import refuse_undecodable
from sidecar.rpc.errors import guarded, to_status
from sidecar.rpc.proto import feedback_pb2 as pb
from sidecar.rpc.proto import feedback_pb2_grpc as pb_grpc

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)

_OUTCOME = {MATCHED: pb.FeedbackResponse.MATCHED}


def feedback_item(msg: pb.FeedbackRequest) -> FeedbackItem:
    """The request's truth tensors, checked and decoded (InvalidInputError)."""
    tensors, raw = msg.truth, msg.raw_truth_contents
    model = msg.model_name[:80]
    if raw and len(raw) != len(tensors):
        raise InvalidInputError(f"feedback for model '{model}' has {len(tensors)} truth"
                                f" tensor(s) but {len(raw)} raw_truth_contents entries")
    truth: list[InferInput] = []
    for index, tensor in enumerate(tensors):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        where = f"truth '{name[:80]}' for model '{model}'"
        if datatype not in KNOWN_DATATYPES:
            raise InvalidInputError(f"{where}: unknown datatype '{datatype[:40]}'")
        if datatype not in NUMPY_DTYPES:
            raise InvalidInputError(f"{where}: datatype {datatype} is not supported")
        if datatype == "BYTES":
            raise InvalidInputError(f"{where}: must be numeric, not BYTES")
        check_shape(where, shape)
        typed = typed_values(tensor)
        if raw:
            if typed is not None:
                raise InvalidInputError(f"{where}: has typed contents while the request uses"
                                        " raw_truth_contents; use one form for all tensors")
            array = decode_raw(where, datatype, shape, raw[index])
        else:
            array = decode_typed(where, datatype, shape, typed)
        truth.append(InferInput(name, datatype, shape, array, None, array.nbytes))
    reward = msg.reward if msg.HasField("reward") else None
    return FeedbackItem(msg.model_name, msg.request_id, truth, reward)


def feedback_response(result: FeedbackResult) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(outcome=_OUTCOME.get(result.outcome, pb.FeedbackResponse.UNMATCHED),
                               versions=result.versions, paired=result.paired,
                               reason=result.reason)


def summary_message(summary: StreamSummary) -> pb.FeedbackSummary:
    return pb.FeedbackSummary(
        received=summary.received, matched=summary.matched, unmatched=summary.unmatched,
        invalid=summary.invalid, paired=summary.paired,
        errors=[pb.ItemError(index=e.index, request_id=e.request_id, reason=e.reason)
                for e in summary.errors])


class FeedbackServicer(pb_grpc.FeedbackServicer):
    def __init__(self, plane: FeedbackPlane) -> None:
        self._plane = plane

    def _item(self, request: Any) -> FeedbackItem:
        refuse_undecodable(request)
        try:
            return feedback_item(request)
        except SidecarError:
            self._plane.refused(request.model_name)
            raise

    @guarded
    async def Send(self, request: Any, context: Context) -> pb.FeedbackResponse:
        return feedback_response(self._plane.send(self._item(request)))

    async def SendStream(self, request_iterator: AsyncIterator[Any], context: Context
                         ) -> pb.FeedbackSummary:
        summary = StreamSummary()
        try:
            async for request in request_iterator:
                try:
                    item = self._item(request)
                except SidecarError as exc:
                    summary.refuse(getattr(request, "request_id", ""), str(exc))
                    continue
                self._plane.send_into(summary, item)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, message = to_status(exc, "SendStream")
            await context.abort(code, message)
            raise  # unreachable: abort raises
        return summary_message(summary)
