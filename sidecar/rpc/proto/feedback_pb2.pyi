from sidecar.rpc.proto import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackRequest(_message.Message):
    __slots__ = ("model_name", "request_id", "truth", "raw_truth_contents", "reward")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRUTH_FIELD_NUMBER: _ClassVar[int]
    RAW_TRUTH_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    request_id: str
    truth: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ModelInferRequest.InferInputTensor]
    raw_truth_contents: _containers.RepeatedScalarFieldContainer[bytes]
    reward: float
    def __init__(self, model_name: _Optional[str] = ..., request_id: _Optional[str] = ..., truth: _Optional[_Iterable[_Union[_inference_pb2.ModelInferRequest.InferInputTensor, _Mapping]]] = ..., raw_truth_contents: _Optional[_Iterable[bytes]] = ..., reward: _Optional[float] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("outcome", "versions", "paired", "reason")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[FeedbackResponse.Outcome]
        MATCHED: _ClassVar[FeedbackResponse.Outcome]
        UNMATCHED: _ClassVar[FeedbackResponse.Outcome]
        INVALID: _ClassVar[FeedbackResponse.Outcome]
    OUTCOME_UNSPECIFIED: FeedbackResponse.Outcome
    MATCHED: FeedbackResponse.Outcome
    UNMATCHED: FeedbackResponse.Outcome
    INVALID: FeedbackResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    outcome: FeedbackResponse.Outcome
    versions: _containers.RepeatedScalarFieldContainer[int]
    paired: bool
    reason: str
    def __init__(self, outcome: _Optional[_Union[FeedbackResponse.Outcome, str]] = ..., versions: _Optional[_Iterable[int]] = ..., paired: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class FeedbackSummary(_message.Message):
    __slots__ = ("received", "matched", "unmatched", "invalid", "paired", "errors")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    received: int
    matched: int
    unmatched: int
    invalid: int
    paired: int
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    def __init__(self, received: _Optional[int] = ..., matched: _Optional[int] = ..., unmatched: _Optional[int] = ..., invalid: _Optional[int] = ..., paired: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "request_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    request_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
