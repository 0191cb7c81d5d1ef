"""The handshake's messages, without I/O: hello, then accept or refusal, and their framing.

Messages are msgpack maps, each framed by a 4-byte little-endian length (at most
`limits.MAX_HANDSHAKE_MESSAGE`). The hello of a shared-memory channel carries, with
SCM_RIGHTS, the region's memfd, the SQ eventfd and the CQ eventfd (in that order); a hello with
`transport: "socket"` carries no descriptor and the channel's commands then travel framed over
this same socket (`channel.protocol.frames`).

hello  = {"version": 1, "role": "driver"|"app"|"stats", "transport": "shm"|"socket",
          "geometry": [sq_entries, cq_entries, slot_size, buf_count, buf_size] (shm only),
          "secret": bytes (optional), "on_behalf_of": {"pid", "uid", "gid", "groups"} (optional),
          "readonly": True (optional: the channel belongs to a read-only mount)}
accept = {"accept": True, "channel_id": int, "token": 16 bytes, "server_pid": int}
refuse = {"accept": False, "reason": str, "errno": int}

A refusal's errno says what kind it is (EACCES: not allowed, EAGAIN: a limit, ETIMEDOUT:
too slow, EPROTO: malformed); the client raises it as `HandshakeRefused`, an OSError.
Everything here is `make_*`/`parse_*` on bytes, so tests feed it bytes; the sockets are
`channel.transport.handshake_io`'s.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from channel.protocol import limits
from channel.protocol.codec import TOKEN_SIZE
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.layout import Geometry

ROLES = frozenset({"driver", "app", "stats"})
TRANSPORTS = frozenset({"shm", "socket"})
LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is on the other end: the kernel's word (SO_PEERCRED), or a trusted driver's."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    role: str
    transport: str
    geometry: Geometry | None
    secret: bytes | None
    on_behalf_of: PeerCredentials | None
    readonly: bool = False

    @property
    def fd_count(self) -> int:
        """Descriptors this hello must arrive with."""
        return limits.HANDSHAKE_FDS if self.transport == "shm" else 0


@dataclass(frozen=True, slots=True)
class Accept:
    channel_id: int
    token: bytes
    server_pid: int


class Refusal(Exception):
    """Why a hello is refused, and the errno the client will raise it with."""

    def __init__(self, reason: str, code: int = errno.EPROTO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


#: What an admission check hands back for an admitted channel: called once when it ends.
Release = Callable[[], None]


def admit_all(creds: PeerCredentials, hello: Hello) -> Release:
    return lambda: None


def frame(payload: bytes) -> bytes:
    """Prefix a message with its length."""
    if len(payload) > limits.MAX_HANDSHAKE_MESSAGE:
        raise ValueError(f"handshake message of {len(payload)} bytes is too long")
    return LENGTH.pack(len(payload)) + payload


def _credentials_to_map(creds: PeerCredentials) -> dict[str, Any]:
    return {"pid": creds.pid, "uid": creds.uid, "gid": creds.gid, "groups": list(creds.groups)}


def make_hello(
    role: str = "app",
    geometry: Geometry | None = None,
    *,
    transport: str = "shm",
    secret: bytes | None = None,
    on_behalf_of: PeerCredentials | None = None,
    readonly: bool = False,
    version: int = limits.PROTOCOL_VERSION,
) -> bytes:
    """The hello's payload (unframed)."""
    hello: dict[str, Any] = {"version": version, "role": role, "transport": transport}
    if readonly:
        hello["readonly"] = True
    if transport == "shm":
        hello["geometry"] = (geometry or Geometry()).as_list()
    if secret is not None:
        hello["secret"] = secret
    if on_behalf_of is not None:
        hello["on_behalf_of"] = _credentials_to_map(on_behalf_of)
    return bytes(msgpack.packb(hello, use_bin_type=True))


def _unpack_map(data: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises a spread of types for bad input
        raise ProtocolError("garbage hello: not a msgpack message") from None
    if not isinstance(value, dict):
        raise ProtocolError("garbage hello: not a map")
    return value


def _int_field(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise ProtocolError(f"{what} must be a 32-bit unsigned integer")
    return value


def _parse_credentials(value: object) -> PeerCredentials:
    if not isinstance(value, dict):
        raise ProtocolError("on_behalf_of must be a map")
    groups = value.get("groups", [])
    if not isinstance(groups, list) or len(groups) > 65536:
        raise ProtocolError("on_behalf_of.groups must be a list of integers")
    return PeerCredentials(
        _int_field(value.get("pid"), "on_behalf_of.pid"),
        _int_field(value.get("uid"), "on_behalf_of.uid"),
        _int_field(value.get("gid"), "on_behalf_of.gid"),
        tuple(_int_field(g, "on_behalf_of.groups") for g in groups),
    )


def parse_hello(data: bytes) -> Hello:
    """Validate a hello's payload; ProtocolError whose message is the refusal's reason."""
    hello = _unpack_map(data)
    version = hello.get("version")
    if version != limits.PROTOCOL_VERSION:
        raise ProtocolError(
            f"wrong version: {version!r}, this server speaks {limits.PROTOCOL_VERSION}"
        )
    role = hello.get("role")
    if role not in ROLES:
        raise ProtocolError(f"unknown role {role!r}")
    transport = hello.get("transport", "shm")
    if transport not in TRANSPORTS:
        raise ProtocolError(f"unknown transport {transport!r}")
    geometry = Geometry.from_list(hello.get("geometry")) if transport == "shm" else None
    secret = hello.get("secret")
    if secret is not None and not isinstance(secret, bytes):
        raise ProtocolError("secret must be bytes")
    forwarded = hello.get("on_behalf_of")
    on_behalf_of = None if forwarded is None else _parse_credentials(forwarded)
    readonly = hello.get("readonly", False)
    if not isinstance(readonly, bool):
        raise ProtocolError("readonly must be true or false")
    return Hello(version, role, transport, geometry, secret, on_behalf_of, readonly)


def make_accept(channel_id: int, token: bytes, server_pid: int) -> bytes:
    answer = {"accept": True, "channel_id": channel_id, "token": token, "server_pid": server_pid}
    return bytes(msgpack.packb(answer, use_bin_type=True))


def make_refusal(reason: str, code: int = errno.EPROTO) -> bytes:
    refusal = {"accept": False, "reason": reason, "errno": code}
    return bytes(msgpack.packb(refusal, use_bin_type=True))


def parse_answer(data: bytes) -> Accept:
    """The server's answer: an Accept, HandshakeRefused(errno, reason), or ProtocolError."""
    try:
        answer = _unpack_map(data)
    except ProtocolError:
        raise ProtocolError("garbage answer from the server") from None
    if answer.get("accept") is False:
        code = answer.get("errno")
        if type(code) is not int or not 0 < code < 4096:
            code = errno.EPROTO
        raise HandshakeRefused(code, str(answer.get("reason", "no reason given")))
    channel_id, token, server_pid = (answer.get(k) for k in ("channel_id", "token", "server_pid"))
    if not (
        answer.get("accept") is True
        and type(channel_id) is int
        and type(server_pid) is int
        and isinstance(token, bytes)
        and len(token) == TOKEN_SIZE
    ):
        raise ProtocolError("malformed accept from the server")
    return Accept(channel_id, token, server_pid)
