"""ringfs's channel: commands and completions between a client and the server, and nothing of
files. Two layers, each importing only downward:

* `channel.protocol`: sans-I/O. Limits, errors, opcodes, the wire codec, the shared region's
  layout, the rings, the two sides' state machines, the handshake's messages, socket framing.
  It imports nothing else of the project.
* `channel.transport`: the protocol on real I/O. The handshake on sockets, doorbells, the
  shared-memory and socket clients and server channels, and one serve/accept path. It imports
  only `channel.protocol`.

The names most callers need are re-exported here; the project's own modules import them from
their layer's module instead (so that no layer depends on this package's `__init__`).
"""

from channel.protocol.errors import ChannelClosed, ChannelError, HandshakeRefused, ProtocolError
from channel.protocol.layout import Geometry
from channel.protocol.opcodes import Op
from channel.transport.calls import Reply
from channel.transport.serve import accept_channel, serve_connection
from channel.transport.shm_client import BlockingClient, TrioClient
from channel.transport.shm_server import Poller, ServerChannel
from channel.transport.socket_client import SocketBlockingClient, SocketTrioClient
from channel.transport.socket_server import SocketServerChannel

__all__ = [
    "BlockingClient",
    "ChannelClosed",
    "ChannelError",
    "Geometry",
    "HandshakeRefused",
    "Op",
    "Poller",
    "ProtocolError",
    "Reply",
    "ServerChannel",
    "SocketBlockingClient",
    "SocketServerChannel",
    "SocketTrioClient",
    "TrioClient",
    "accept_channel",
    "serve_connection",
]
