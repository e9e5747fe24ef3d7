from protocol.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataFreshness(_message.Message):
    __slots__ = ("ingested_at",)
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    ingested_at: str
    def __init__(self, ingested_at: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("site_id", "software_version", "freshness")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    software_version: str
    freshness: DataFreshness
    def __init__(self, site_id: _Optional[str] = ..., software_version: _Optional[str] = ..., freshness: _Optional[_Union[DataFreshness, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ms",)
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ms: int
    def __init__(self, sent_unix_ms: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "study_id", "releases")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    study_id: str
    releases: _containers.RepeatedCompositeFieldContainer[_common_pb2.AnalysisRelease]
    def __init__(self, task_id: _Optional[str] = ..., study_id: _Optional[str] = ..., releases: _Optional[_Iterable[_Union[_common_pb2.AnalysisRelease, _Mapping]]] = ...) -> None: ...

class TaskRefusal(_message.Message):
    __slots__ = ("task_id", "study_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    study_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., study_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "result", "refusal")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    result: TaskResult
    refusal: TaskRefusal
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., refusal: _Optional[_Union[TaskRefusal, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("aggregator_version", "heartbeat_interval_s", "max_message_bytes")
    AGGREGATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    aggregator_version: str
    heartbeat_interval_s: int
    max_message_bytes: int
    def __init__(self, aggregator_version: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class StudyTask(_message.Message):
    __slots__ = ("task_id", "study_id", "study", "round", "inputs")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    study_id: str
    study: _common_pb2.SignedStudy
    round: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.AnalysisRelease]
    def __init__(self, task_id: _Optional[str] = ..., study_id: _Optional[str] = ..., study: _Optional[_Union[_common_pb2.SignedStudy, _Mapping]] = ..., round: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.AnalysisRelease, _Mapping]]] = ...) -> None: ...

class AggregatorMessage(_message.Message):
    __slots__ = ("welcome", "heartbeat", "task")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    heartbeat: Heartbeat
    task: StudyTask
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., task: _Optional[_Union[StudyTask, _Mapping]] = ...) -> None: ...
