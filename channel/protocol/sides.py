"""The two ends of a channel, ClientSide and ServerSide: picks the implementation, once.

By default the hot paths (post and reap, take and complete, and the ring ends) run in the
compiled core `channel/_core.c`; `RINGFS_PURE=1` selects the pure-Python reference
`channel.protocol.sides_pure` instead, for debugging. Both have the same API and behaviour
(tests/test_core_differential.py drives them with the same streams and compares every byte).
The compiled classes live in `channel.protocol.sides_compiled`.
"""

from __future__ import annotations

import os

from channel.protocol.sides_pure import Rejected

#: "pure" or "compiled": which implementation this process runs.
IMPLEMENTATION = "pure" if os.environ.get("RINGFS_PURE") == "1" else "compiled"

__all__ = [
    "IMPLEMENTATION",
    "ClientSide",
    "Rejected",
    "ServerSide",
    "cq_consumer",
    "cq_producer",
    "sq_consumer",
    "sq_producer",
]

if IMPLEMENTATION == "pure":
    from channel.protocol.sides_pure import (
        ClientSide,
        ServerSide,
        cq_consumer,
        cq_producer,
        sq_consumer,
        sq_producer,
    )
else:
    # No fallback: a missing or broken build is an ImportError here, not a silent slowdown.
    from channel.protocol.sides_compiled import (
        ClientSide,
        ServerSide,
        cq_consumer,
        cq_producer,
        sq_consumer,
        sq_producer,
    )
