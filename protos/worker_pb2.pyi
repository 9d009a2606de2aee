from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_UINT16: _ClassVar[DataType]
    DATA_TYPE_UINT32: _ClassVar[DataType]
    DATA_TYPE_UINT64: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_FP16: _ClassVar[DataType]
    DATA_TYPE_FP32: _ClassVar[DataType]
    DATA_TYPE_FP64: _ClassVar[DataType]
    DATA_TYPE_BF16: _ClassVar[DataType]
    DATA_TYPE_BYTES: _ClassVar[DataType]

class CallErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_ERROR_CODE_UNSPECIFIED: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_INVALID_INPUT: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_MODEL_NOT_FOUND: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_LOAD_FAILED: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_OVERLOADED: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_INTERNAL: _ClassVar[CallErrorCode]
    CALL_ERROR_CODE_ANSWER_TOO_LARGE: _ClassVar[CallErrorCode]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_BOOL: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_UINT16: DataType
DATA_TYPE_UINT32: DataType
DATA_TYPE_UINT64: DataType
DATA_TYPE_INT8: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_FP16: DataType
DATA_TYPE_FP32: DataType
DATA_TYPE_FP64: DataType
DATA_TYPE_BF16: DataType
DATA_TYPE_BYTES: DataType
CALL_ERROR_CODE_UNSPECIFIED: CallErrorCode
CALL_ERROR_CODE_INVALID_INPUT: CallErrorCode
CALL_ERROR_CODE_MODEL_NOT_FOUND: CallErrorCode
CALL_ERROR_CODE_LOAD_FAILED: CallErrorCode
CALL_ERROR_CODE_OVERLOADED: CallErrorCode
CALL_ERROR_CODE_DEADLINE_EXCEEDED: CallErrorCode
CALL_ERROR_CODE_INTERNAL: CallErrorCode
CALL_ERROR_CODE_ANSWER_TOO_LARGE: CallErrorCode

class ModelKey(_message.Message):
    __slots__ = ("tenant_id", "model_version_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    model_version_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., model_version_id: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InferCall(_message.Message):
    __slots__ = ("model", "inputs", "outputs", "request_id", "timeout_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    model: ModelKey
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    timeout_ms: int
    def __init__(self, model: _Optional[_Union[ModelKey, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[InferCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[InferCall, _Mapping]]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[InferResult]
    def __init__(self, results: _Optional[_Iterable[_Union[InferResult, _Mapping]]] = ...) -> None: ...

class InferResult(_message.Message):
    __slots__ = ("outputs", "error")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    error: CallError
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: CallErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[CallErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelKey
    def __init__(self, model: _Optional[_Union[ModelKey, _Mapping]] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("model", "newly_loaded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NEWLY_LOADED_FIELD_NUMBER: _ClassVar[int]
    model: LoadedModel
    newly_loaded: bool
    def __init__(self, model: _Optional[_Union[LoadedModel, _Mapping]] = ..., newly_loaded: _Optional[bool] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelKey
    def __init__(self, model: _Optional[_Union[ModelKey, _Mapping]] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ("was_loaded",)
    WAS_LOADED_FIELD_NUMBER: _ClassVar[int]
    was_loaded: bool
    def __init__(self, was_loaded: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("instance_id", "models", "in_flight", "memory", "evictions", "batching")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    in_flight: int
    memory: Memory
    evictions: int
    batching: _containers.RepeatedCompositeFieldContainer[BatchStats]
    def __init__(self, instance_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., in_flight: _Optional[int] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., evictions: _Optional[int] = ..., batching: _Optional[_Iterable[_Union[BatchStats, _Mapping]]] = ...) -> None: ...

class BatchStats(_message.Message):
    __slots__ = ("model", "calls", "batches", "rows", "size_buckets")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    model: ModelKey
    calls: int
    batches: int
    rows: int
    size_buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[_Union[ModelKey, _Mapping]] = ..., calls: _Optional[int] = ..., batches: _Optional[int] = ..., rows: _Optional[int] = ..., size_buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("model", "bytes_used", "idle_ms", "in_flight", "queued")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    model: ModelKey
    bytes_used: int
    idle_ms: int
    in_flight: int
    queued: int
    def __init__(self, model: _Optional[_Union[ModelKey, _Mapping]] = ..., bytes_used: _Optional[int] = ..., idle_ms: _Optional[int] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("rss_bytes", "models_bytes", "budget_bytes")
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    rss_bytes: int
    models_bytes: int
    budget_bytes: int
    def __init__(self, rss_bytes: _Optional[int] = ..., models_bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("instance_id", "draining")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    draining: bool
    def __init__(self, instance_id: _Optional[str] = ..., draining: _Optional[bool] = ...) -> None: ...
