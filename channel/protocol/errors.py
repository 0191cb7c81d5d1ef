"""The channel's exception types and its one errno convention.

Errors cross the channel as a completion status: 0 for success, a negative errno otherwise,
never as text. These exceptions exist only at the edges, where bytes become values.
"""

from __future__ import annotations

import errno
import os


class ChannelError(Exception):
    """Base class of every error the channel raises."""


class ProtocolError(ChannelError):
    """Bytes in the region, or on a socket, that do not form a valid message."""

    errno = errno.EPROTO


class HandshakeRefused(ChannelError, OSError):
    """The server (or a driver) answered a hello with a refusal. An OSError, so that callers
    see it as the os module's errors: `errno` says what kind (EACCES: not allowed, EAGAIN: a
    limit was reached, ETIMEDOUT: the handshake took too long, EPROTO: a malformed hello)
    and the message gives the reason."""


class ChannelClosed(ChannelError):
    """The peer is gone, or the channel was closed."""


def status_to_oserror(status: int, what: str = "") -> OSError:
    """Turn a negative-errno completion status into the OSError the os module would raise."""
    code = -status
    return OSError(code, os.strerror(code), what) if what else OSError(code, os.strerror(code))
