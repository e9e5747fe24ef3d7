from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedStudy(_message.Message):
    __slots__ = ("canonical_study", "signature", "public_key")
    CANONICAL_STUDY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    canonical_study: bytes
    signature: bytes
    public_key: bytes
    def __init__(self, canonical_study: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class NamedVector(_message.Message):
    __slots__ = ("key", "ints", "reals", "int64_le", "float64_le")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    REALS_FIELD_NUMBER: _ClassVar[int]
    INT64_LE_FIELD_NUMBER: _ClassVar[int]
    FLOAT64_LE_FIELD_NUMBER: _ClassVar[int]
    key: str
    ints: _containers.RepeatedScalarFieldContainer[int]
    reals: _containers.RepeatedScalarFieldContainer[float]
    int64_le: bytes
    float64_le: bytes
    def __init__(self, key: _Optional[str] = ..., ints: _Optional[_Iterable[int]] = ..., reals: _Optional[_Iterable[float]] = ..., int64_le: _Optional[bytes] = ..., float64_le: _Optional[bytes] = ...) -> None: ...

class AnalysisRelease(_message.Message):
    __slots__ = ("analysis", "kind", "vectors", "metadata_json", "error")
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    analysis: str
    kind: str
    vectors: _containers.RepeatedCompositeFieldContainer[NamedVector]
    metadata_json: str
    error: str
    def __init__(self, analysis: _Optional[str] = ..., kind: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[NamedVector, _Mapping]]] = ..., metadata_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...
