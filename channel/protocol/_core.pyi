"""Type stub of the compiled core (channel/protocol/_core.c)."""

from collections import deque
from typing import Any

from channel.protocol.codec import Command, Completion, HeaderFields
from channel.protocol.ring import RingConsumer, RingProducer
from channel.protocol.sides_pure import Rejected

HEADER_LAYOUT: dict[str, tuple[int, ...]]
TOKEN_SIZE: int
NO_BUFFER: int

def configure(**constants: Any) -> None: ...

class Producer(RingProducer):
    def __init__(
        self, words: memoryview, head: int, tail: int, flags: int, entries: int,
        slot_size: int, slots: tuple[memoryview, ...], producer: bool,
    ) -> None: ...  # fmt: skip

class Consumer(RingConsumer):
    def __init__(
        self, words: memoryview, head: int, tail: int, flags: int, entries: int,
        slot_size: int, slots: tuple[memoryview, ...], producer: bool,
    ) -> None: ...  # fmt: skip

class ClientCore:
    sq: RingProducer
    cq: RingConsumer
    token: bytes
    in_flight: dict[int, int]
    _next_tag: int
    stats: memoryview
    def __init__(
        self, sq: RingProducer, cq: RingConsumer, token: bytes, stats: memoryview, buf_size: int
    ) -> None: ...
    def post(
        self, opcode: int, body: bytes, buf: int, data_len: int, fields: HeaderFields
    ) -> tuple[int, bool]: ...
    def reap(self) -> Completion | None: ...

class ServerCore:
    sq: RingConsumer
    cq: RingProducer
    token: bytes
    pending: deque[tuple[int, int, bytes, int, int, int]]
    outstanding: int
    staged: int
    stats: memoryview
    def __init__(
        self, sq: RingConsumer, cq: RingProducer, token: bytes, stats: memoryview, buf_count: int,
        buf_size: int, pending: deque[tuple[int, int, bytes, int, int, int]],
    ) -> None: ...  # fmt: skip
    def take(self) -> Command | Rejected | None: ...
    def take_many(self, limit: int) -> list[Command | Rejected]: ...
    def complete(
        self, tag: int, status: int, body: bytes = b"", *, data_len: int = 0, buf: int = -1,
        value: int = 0,
    ) -> bool: ...  # fmt: skip
    def stage(
        self, tag: int, status: int, body: bytes = b"", *, data_len: int = 0, buf: int = -1,
        value: int = 0,
    ) -> None: ...  # fmt: skip
    def publish(self) -> bool: ...
