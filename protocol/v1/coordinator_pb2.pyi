from protocol.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WaitStudyRequest(_message.Message):
    __slots__ = ("study_id", "timeout_ms")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    timeout_ms: int
    def __init__(self, study_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class StudyRef(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class SiteState(_message.Message):
    __slots__ = ("site_id", "state", "reason", "updated_at")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    state: str
    reason: str
    updated_at: str
    def __init__(self, site_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

class StudyStatus(_message.Message):
    __slots__ = ("study_id", "status", "title", "submitted_at", "completed_at", "sites")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    status: str
    title: str
    submitted_at: str
    completed_at: str
    sites: _containers.RepeatedCompositeFieldContainer[SiteState]
    def __init__(self, study_id: _Optional[str] = ..., status: _Optional[str] = ..., title: _Optional[str] = ..., submitted_at: _Optional[str] = ..., completed_at: _Optional[str] = ..., sites: _Optional[_Iterable[_Union[SiteState, _Mapping]]] = ...) -> None: ...

class StudyResults(_message.Message):
    __slots__ = ("study_id", "status", "results_json")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_JSON_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    status: str
    results_json: str
    def __init__(self, study_id: _Optional[str] = ..., status: _Optional[str] = ..., results_json: _Optional[str] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StudyList(_message.Message):
    __slots__ = ("studies",)
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[StudyStatus]
    def __init__(self, studies: _Optional[_Iterable[_Union[StudyStatus, _Mapping]]] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("site_id", "connected", "software_version", "last_seen", "ingested_at")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    connected: bool
    software_version: str
    last_seen: str
    ingested_at: str
    def __init__(self, site_id: _Optional[str] = ..., connected: _Optional[bool] = ..., software_version: _Optional[str] = ..., last_seen: _Optional[str] = ..., ingested_at: _Optional[str] = ...) -> None: ...

class SiteList(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ...) -> None: ...
