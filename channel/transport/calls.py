"""What every client endpoint shares, over either transport: `Reply`, the request checks and
the `call`/`call_into` skeletons (blocking and trio; each endpoint provides `_call`), and the
interfaces callers hold a client by (`AsyncCaller`, `AsyncChannelClient`, `BlockingCaller`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

import trio

from channel.protocol.codec import Completion, HeaderFields, pack_body
from channel.protocol.codec import header_fields as header_fields_of
from channel.protocol.errors import ChannelClosed, status_to_oserror

Buffer = bytes | bytearray | memoryview
_new_tuple = tuple.__new__


class Reply(NamedTuple):
    """A completion as the caller sees it. `data` holds reply data copied out of the data
    buffer (None when the call asked for none); `data_len` is its length (also for
    `call_into`, whose data went to the caller's buffer)."""

    status: int
    value: int = 0
    body: Any = None
    data: bytes | None = None
    data_len: int = 0

    @property
    def ok(self) -> bool:
        return self.status >= 0

    def check(self, what: str = "") -> Reply:
        """Raise the OSError of a negative status; return self otherwise."""
        if self.status < 0:
            raise status_to_oserror(self.status, what)
        return self


def _pack(body: Any, max_body: int) -> bytes:
    packed = pack_body(body)
    if len(packed) > max_body:
        raise ValueError(f"body of {len(packed)} bytes exceeds the slot's {max_body}")
    return packed


def make_reply(completion: Completion, data: bytes | None) -> Reply:
    return _new_tuple(
        Reply, (completion.status, completion.value, completion.body, data, completion.data_len)
    )


def call_fields(header_fields: dict[str, int], size: int) -> HeaderFields:
    """The header fields of a call's keywords, with `size` (the reply data wanted) set."""
    if size:
        header_fields["size"] = size
    return header_fields_of(header_fields)


#: One command as an endpoint's `_call` takes it, built by `Requests._request`: (opcode,
#: packed body, data, read_size, dest, need_buf, header fields). `dest` is where `call_into`
#: wants the reply data (None for `call`). A plain tuple, not a NamedTuple: building one of
#: those (tuple.__new__ of a subclass) cost 9% more instructions on the client's side of a
#: call under callgrind, and every `_call` unpacks it positionally anyway.
Request = tuple[int, bytes, Buffer | None, int, memoryview | None, bool, HeaderFields]


class Requests:
    """What every endpoint, over either transport, does before sending a command: check the
    payload sizes against its data buffers, pack the body and build the header fields, into
    the one `Request` its `_call` takes."""

    buf_size: int
    max_body: int

    def _has_buffers(self) -> bool:
        return True

    def _request(
        self,
        opcode: int,
        body: Any,
        data: Buffer | None,
        read_size: int,
        dest: memoryview | bytearray | None,
        header_fields: dict[str, int],
    ) -> Request:
        if dest is not None:
            dest = memoryview(dest).cast("B")
            read_size = min(len(dest), self.buf_size)
        elif data is None and not read_size:
            packed = _pack(body, self.max_body)
            return opcode, packed, None, 0, None, False, header_fields_of(header_fields)
        if data is not None and len(data) > self.buf_size:
            raise ValueError(f"{len(data)} bytes of data exceed the {self.buf_size}-byte buffer")
        if read_size < 0 or read_size > self.buf_size:
            raise ValueError(f"read_size {read_size} is outside 0..{self.buf_size}")
        if not self._has_buffers():
            raise ValueError("this channel has no data buffers")
        fields = call_fields(header_fields, read_size)
        packed = _pack(body, self.max_body)
        return opcode, packed, data, read_size, dest, True, fields


class BlockingCalls(Requests):
    """`call` and `call_into` of the blocking endpoints; each transport provides `_call`."""

    def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply:
        """Send one command and wait for its completion. `data` travels in a data buffer;
        with `read_size` > 0 up to that many bytes of reply data come back in `Reply.data`."""
        return self._call(self._request(opcode, body, data, read_size, None, header_fields))

    def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply:
        """Like `call`, but reply data (up to len(dest)) is copied into `dest`."""
        return self._call(self._request(opcode, body, data, 0, dest, header_fields))

    def _call(self, request: Request) -> Reply:
        raise NotImplementedError


# BlockingCalls' two methods again, as coroutines: the signatures must repeat, the body is shared.
class AsyncCalls(Requests):
    """`call` and `call_into` of the trio endpoints: many calls may be in flight at once."""

    async def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply:
        """As `BlockingCalls.call`."""
        return await self._call(self._request(opcode, body, data, read_size, None, header_fields))

    async def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply:
        """As `BlockingCalls.call_into`."""
        return await self._call(self._request(opcode, body, data, 0, dest, header_fields))

    async def _call(self, request: Request) -> Reply:
        raise NotImplementedError


@asynccontextmanager
async def background(*tasks: Any) -> AsyncIterator[None]:
    """Run `tasks` in a nursery for the duration of the block, then cancel them. An exception
    raised by the block comes out as itself, not wrapped in an ExceptionGroup."""
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(task)
        try:
            yield
        except BaseException as exc:
            raised = exc
        finally:
            nursery.cancel_scope.cancel()
    if raised is not None:
        raise raised


class Waiter:
    """One call of a trio endpoint in flight, over either transport: where its reply data
    goes, and the event its caller waits on for the reply or the error."""

    __slots__ = ("dest", "error", "event", "read_size", "reply")

    def __init__(self, read_size: int, dest: memoryview | None) -> None:
        self.read_size = read_size
        self.dest = dest
        self.event = trio.Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None


W = TypeVar("W", bound=Waiter)


class AsyncEnd(Generic[W]):
    """The end of a trio endpoint's channel, over either transport: its calls in flight
    (`_waiters`, by tag), `wait_closed`, and `_fail`, which ends every one of them."""

    def __init__(self) -> None:
        self.closed = False
        self._waiters: dict[int, W] = {}
        self._closed_event = trio.Event()

    async def wait_closed(self) -> None:
        """Return once the channel is over (the server went away, or the client closed)."""
        await self._closed_event.wait()

    def _fail(self, error: BaseException) -> None:
        """Fail every call in flight and every future call."""
        self.closed = True
        self._closed_event.set()
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            if not waiter.event.is_set():
                waiter.error = error
                self._abandon(waiter)
                waiter.event.set()

    def _abandon(self, waiter: W) -> None:
        """What else a failed call gives back (the shared-memory one: its permits)."""

    def _hang_up(self) -> None:
        """Release what the endpoint holds once it is closed (socket, mapping)."""
        raise NotImplementedError

    @asynccontextmanager
    async def _running(self, *tasks: Any) -> AsyncIterator[Self]:
        """The endpoint with its background `tasks` for the duration of the block; then
        every call fails with ChannelClosed and the endpoint hangs up."""
        try:
            async with background(*tasks):
                yield self
        finally:
            self._fail(ChannelClosed("the client was closed"))
            self._hang_up()


class BlockingCaller(Protocol):
    """What a caller needs of a blocking client endpoint, over either transport."""

    channel_id: int
    server_pid: int

    def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply: ...

    def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply: ...

    def close(self) -> None: ...


class AsyncCaller(Protocol):
    """What a caller needs to send commands under trio: the trio endpoints of both transports
    have it, and so does whatever forwards to one (the driver's `fusefront.link.ServerLink`)."""

    async def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply: ...


class AsyncChannelClient(AsyncCaller, Protocol):
    """A trio client endpoint, over either transport: `AsyncCaller` plus its identity,
    `call_into` and the wait for its end."""

    channel_id: int
    server_pid: int

    async def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply: ...

    async def wait_closed(self) -> None: ...
