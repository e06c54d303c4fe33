from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionRef(_message.Message):
    __slots__ = ("number", "digest")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    number: int
    digest: str
    def __init__(self, number: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class VersionCounters(_message.Message):
    __slots__ = ("requests", "errors", "p50_ms", "p90_ms", "p99_ms", "inflight")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    inflight: int
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., inflight: _Optional[int] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("model", "number", "digest", "size", "mtime", "ctime", "loaded_at", "activated_at", "path", "state", "reason", "inputs", "outputs", "counters", "quarantined", "batching", "created", "updated", "onnx", "commit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    CTIME_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    number: int
    digest: str
    size: int
    mtime: float
    ctime: float
    loaded_at: float
    activated_at: float
    path: str
    state: str
    reason: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    counters: VersionCounters
    quarantined: bool
    batching: Batching
    created: str
    updated: str
    onnx: OnnxMetadata
    commit: GitCommit
    def __init__(self, model: _Optional[str] = ..., number: _Optional[int] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., mtime: _Optional[float] = ..., ctime: _Optional[float] = ..., loaded_at: _Optional[float] = ..., activated_at: _Optional[float] = ..., path: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., counters: _Optional[_Union[VersionCounters, _Mapping]] = ..., quarantined: _Optional[bool] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., created: _Optional[str] = ..., updated: _Optional[str] = ..., onnx: _Optional[_Union[OnnxMetadata, _Mapping]] = ..., commit: _Optional[_Union[GitCommit, _Mapping]] = ...) -> None: ...

class GitCommit(_message.Message):
    __slots__ = ("hash", "time", "subject", "shallow")
    HASH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SHALLOW_FIELD_NUMBER: _ClassVar[int]
    hash: str
    time: str
    subject: str
    shallow: bool
    def __init__(self, hash: _Optional[str] = ..., time: _Optional[str] = ..., subject: _Optional[str] = ..., shallow: _Optional[bool] = ...) -> None: ...

class OnnxMetadata(_message.Message):
    __slots__ = ("producer_name", "producer_version", "domain", "doc_string", "model_version", "graph_name", "metadata_props", "metadata_props_dropped")
    class MetadataPropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DOC_STRING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_PROPS_FIELD_NUMBER: _ClassVar[int]
    METADATA_PROPS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    producer_name: str
    producer_version: str
    domain: str
    doc_string: str
    model_version: int
    graph_name: str
    metadata_props: _containers.ScalarMap[str, str]
    metadata_props_dropped: int
    def __init__(self, producer_name: _Optional[str] = ..., producer_version: _Optional[str] = ..., domain: _Optional[str] = ..., doc_string: _Optional[str] = ..., model_version: _Optional[int] = ..., graph_name: _Optional[str] = ..., metadata_props: _Optional[_Mapping[str, str]] = ..., metadata_props_dropped: _Optional[int] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_microseconds", "preferred_batch_size", "refused", "batches")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_microseconds: int
    preferred_batch_size: _containers.RepeatedScalarFieldContainer[int]
    refused: str
    batches: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_microseconds: _Optional[int] = ..., preferred_batch_size: _Optional[_Iterable[int]] = ..., refused: _Optional[str] = ..., batches: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "active", "previous", "pinned", "ready", "loaded_versions", "versions_on_disk", "canary", "canary_weight_percent", "shadow", "guard_note", "note", "declaration")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    GUARD_NOTE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DECLARATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    active: VersionRef
    previous: VersionRef
    pinned: bool
    ready: bool
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    versions_on_disk: int
    canary: VersionRef
    canary_weight_percent: float
    shadow: VersionRef
    guard_note: str
    note: str
    declaration: Declaration
    def __init__(self, name: _Optional[str] = ..., active: _Optional[_Union[VersionRef, _Mapping]] = ..., previous: _Optional[_Union[VersionRef, _Mapping]] = ..., pinned: _Optional[bool] = ..., ready: _Optional[bool] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., versions_on_disk: _Optional[int] = ..., canary: _Optional[_Union[VersionRef, _Mapping]] = ..., canary_weight_percent: _Optional[float] = ..., shadow: _Optional[_Union[VersionRef, _Mapping]] = ..., guard_note: _Optional[str] = ..., note: _Optional[str] = ..., declaration: _Optional[_Union[Declaration, _Mapping]] = ...) -> None: ...

class Declaration(_message.Message):
    __slots__ = ("serve", "applied", "conflict")
    SERVE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    serve: str
    applied: str
    conflict: str
    def __init__(self, serve: _Optional[str] = ..., applied: _Optional[str] = ..., conflict: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "ready", "uptime_s", "warm_versions", "state_dir", "models")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    WARM_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    version: str
    ready: bool
    uptime_s: float
    warm_versions: int
    state_dir: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, version: _Optional[str] = ..., ready: _Optional[bool] = ..., uptime_s: _Optional[float] = ..., warm_versions: _Optional[int] = ..., state_dir: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model", "version", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("model", "version", "expected_active", "force", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    expected_active: str
    force: bool
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., expected_active: _Optional[str] = ..., force: _Optional[bool] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "expected_active", "actor", "reason", "force")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    expected_active: str
    actor: str
    reason: str
    force: bool
    def __init__(self, model: _Optional[str] = ..., expected_active: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class SwapResponse(_message.Message):
    __slots__ = ("model", "from_version", "to_version", "swap_us", "total_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAP_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    from_version: VersionRef
    to_version: VersionRef
    swap_us: float
    total_ms: float
    def __init__(self, model: _Optional[str] = ..., from_version: _Optional[_Union[VersionRef, _Mapping]] = ..., to_version: _Optional[_Union[VersionRef, _Mapping]] = ..., swap_us: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model", "version", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("model", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("pinned",)
    PINNED_FIELD_NUMBER: _ClassVar[int]
    pinned: bool
    def __init__(self, pinned: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "model", "action", "actor", "reason", "from_version", "to_version", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    model: str
    action: str
    actor: str
    reason: str
    from_version: VersionRef
    to_version: VersionRef
    details: _containers.ScalarMap[str, str]
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., model: _Optional[str] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., from_version: _Optional[_Union[VersionRef, _Mapping]] = ..., to_version: _Optional[_Union[VersionRef, _Mapping]] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after_seq", "limit", "model")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    model: str
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "last_seq")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    last_seq: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_seq", "model")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    model: str
    def __init__(self, after_seq: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class GetGuardRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetGuardRequest(_message.Message):
    __slots__ = ("model", "settings", "reset", "actor")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    settings: _containers.ScalarMap[str, str]
    reset: bool
    actor: str
    def __init__(self, model: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., reset: _Optional[bool] = ..., actor: _Optional[str] = ...) -> None: ...

class GuardResponse(_message.Message):
    __slots__ = ("model", "settings", "overrides", "state")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    settings: _containers.ScalarMap[str, str]
    overrides: _containers.ScalarMap[str, str]
    state: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., overrides: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CanaryRequest(_message.Message):
    __slots__ = ("model", "version", "weight_percent", "force", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    weight_percent: float
    force: bool
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., weight_percent: _Optional[float] = ..., force: _Optional[bool] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ShadowRequest(_message.Message):
    __slots__ = ("model", "version", "force", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    force: bool
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., force: _Optional[bool] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CandidateCommand(_message.Message):
    __slots__ = ("model", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CandidateResponse(_message.Message):
    __slots__ = ("model", "candidate", "kind", "figures")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    candidate: VersionRef
    kind: str
    figures: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., candidate: _Optional[_Union[VersionRef, _Mapping]] = ..., kind: _Optional[str] = ..., figures: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QuarantineRequest(_message.Message):
    __slots__ = ("model", "version", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class QuarantineResponse(_message.Message):
    __slots__ = ("digest", "quarantine")
    class QuarantineEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    quarantine: _containers.ScalarMap[str, str]
    def __init__(self, digest: _Optional[str] = ..., quarantine: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class MetricFigure(_message.Message):
    __slots__ = ("name", "value", "samples", "interval", "configured")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    samples: int
    interval: Interval
    configured: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., samples: _Optional[int] = ..., interval: _Optional[_Union[Interval, _Mapping]] = ..., configured: _Optional[bool] = ...) -> None: ...

class CompareRow(_message.Message):
    __slots__ = ("version", "role", "digest", "requests", "errors", "error_ratio", "p50_ms", "p99_ms", "metrics", "matched", "mirrored", "invalid", "reward_count", "reward_sum", "paired", "agreement", "agreement_rows", "favoured")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATIO_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    REWARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    REWARD_SUM_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ROWS_FIELD_NUMBER: _ClassVar[int]
    FAVOURED_FIELD_NUMBER: _ClassVar[int]
    version: int
    role: str
    digest: str
    requests: int
    errors: int
    error_ratio: float
    p50_ms: float
    p99_ms: float
    metrics: _containers.RepeatedCompositeFieldContainer[MetricFigure]
    matched: int
    mirrored: int
    invalid: int
    reward_count: int
    reward_sum: float
    paired: int
    agreement: float
    agreement_rows: int
    favoured: bool
    def __init__(self, version: _Optional[int] = ..., role: _Optional[str] = ..., digest: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_ratio: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., metrics: _Optional[_Iterable[_Union[MetricFigure, _Mapping]]] = ..., matched: _Optional[int] = ..., mirrored: _Optional[int] = ..., invalid: _Optional[int] = ..., reward_count: _Optional[int] = ..., reward_sum: _Optional[float] = ..., paired: _Optional[int] = ..., agreement: _Optional[float] = ..., agreement_rows: _Optional[int] = ..., favoured: _Optional[bool] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("model", "versions", "favoured_version", "favour_reason", "metric", "quality", "feedback")
    class FeedbackEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FAVOURED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FAVOUR_REASON_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[CompareRow]
    favoured_version: int
    favour_reason: str
    metric: str
    quality: str
    feedback: _containers.ScalarMap[str, int]
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[CompareRow, _Mapping]]] = ..., favoured_version: _Optional[int] = ..., favour_reason: _Optional[str] = ..., metric: _Optional[str] = ..., quality: _Optional[str] = ..., feedback: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("id", "model", "from_version", "to_version", "rule", "reason", "evidence", "key", "time", "approve_at")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVE_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    from_version: VersionRef
    to_version: VersionRef
    rule: str
    reason: str
    evidence: _containers.ScalarMap[str, str]
    key: str
    time: float
    approve_at: float
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., from_version: _Optional[_Union[VersionRef, _Mapping]] = ..., to_version: _Optional[_Union[VersionRef, _Mapping]] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Mapping[str, str]] = ..., key: _Optional[str] = ..., time: _Optional[float] = ..., approve_at: _Optional[float] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListProposalsResponse(_message.Message):
    __slots__ = ("proposals",)
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("model", "actor", "reason", "proposal_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    proposal_id: str
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., proposal_id: _Optional[str] = ...) -> None: ...

class DismissRequest(_message.Message):
    __slots__ = ("model", "actor", "reason", "proposal_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    proposal_id: str
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., proposal_id: _Optional[str] = ...) -> None: ...

class DecisionResponse(_message.Message):
    __slots__ = ("proposal", "actor", "approved", "swap", "quarantined")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    SWAP_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    actor: str
    approved: bool
    swap: SwapResponse
    quarantined: str
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ..., actor: _Optional[str] = ..., approved: _Optional[bool] = ..., swap: _Optional[_Union[SwapResponse, _Mapping]] = ..., quarantined: _Optional[str] = ...) -> None: ...

class FleetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetResponse(_message.Message):
    __slots__ = ("fleet", "replica", "connected", "members", "models", "quarantine", "pending", "errors")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLEET_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    replica: str
    connected: bool
    members: _containers.RepeatedCompositeFieldContainer[FleetMember]
    models: _containers.RepeatedCompositeFieldContainer[FleetModelState]
    quarantine: _containers.RepeatedCompositeFieldContainer[FleetQuarantine]
    pending: int
    errors: _containers.ScalarMap[str, str]
    def __init__(self, fleet: _Optional[str] = ..., replica: _Optional[str] = ..., connected: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[FleetMember, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[FleetModelState, _Mapping]]] = ..., quarantine: _Optional[_Iterable[_Union[FleetQuarantine, _Mapping]]] = ..., pending: _Optional[int] = ..., errors: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FleetMember(_message.Message):
    __slots__ = ("replica", "address", "control_address", "started", "models")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    address: str
    control_address: str
    started: float
    models: _containers.RepeatedCompositeFieldContainer[FleetMemberModel]
    def __init__(self, replica: _Optional[str] = ..., address: _Optional[str] = ..., control_address: _Optional[str] = ..., started: _Optional[float] = ..., models: _Optional[_Iterable[_Union[FleetMemberModel, _Mapping]]] = ...) -> None: ...

class FleetMemberModel(_message.Message):
    __slots__ = ("model", "serving", "ready", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    serving: VersionRef
    ready: bool
    error: str
    def __init__(self, model: _Optional[str] = ..., serving: _Optional[_Union[VersionRef, _Mapping]] = ..., ready: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class FleetModelState(_message.Message):
    __slots__ = ("model", "active", "previous", "pinned", "guard", "watermark", "changed_by", "changed_at")
    class GuardEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    active: VersionRef
    previous: VersionRef
    pinned: bool
    guard: _containers.ScalarMap[str, str]
    watermark: int
    changed_by: str
    changed_at: float
    def __init__(self, model: _Optional[str] = ..., active: _Optional[_Union[VersionRef, _Mapping]] = ..., previous: _Optional[_Union[VersionRef, _Mapping]] = ..., pinned: _Optional[bool] = ..., guard: _Optional[_Mapping[str, str]] = ..., watermark: _Optional[int] = ..., changed_by: _Optional[str] = ..., changed_at: _Optional[float] = ...) -> None: ...

class FleetQuarantine(_message.Message):
    __slots__ = ("digest", "reason", "model", "by")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    reason: str
    model: str
    by: str
    def __init__(self, digest: _Optional[str] = ..., reason: _Optional[str] = ..., model: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...
