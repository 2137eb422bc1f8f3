from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

DESCRIPTOR: _descriptor.FileDescriptor

class Head(_message.Message):
    __slots__ = ("chunks", "dtype", "header_json", "kind", "length", "nonce", "round", "run_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    run_id: str
    round: int
    nonce: bytes
    header_json: str
    dtype: str
    length: int
    chunks: int
    def __init__(
        self,
        kind: str | None = ...,
        run_id: str | None = ...,
        round: int | None = ...,
        nonce: bytes | None = ...,
        header_json: str | None = ...,
        dtype: str | None = ...,
        length: int | None = ...,
        chunks: int | None = ...,
    ) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "offset")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: int | None = ..., data: bytes | None = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("chunk", "head")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    head: Head
    chunk: Chunk
    def __init__(
        self,
        head: Head | _Mapping | None = ...,
        chunk: Chunk | _Mapping | None = ...,
    ) -> None: ...
