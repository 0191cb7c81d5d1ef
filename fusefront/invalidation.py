"""Applying the server's coherence notices to the kernel (see backend_server.coherence).

One task keeps a WATCH command outstanding. Its completion lists what application channels
changed among the objects this mount holds, and what changed in the export behind the
server's back (backend_server.watcher; `[ALL, root]` when the server lost track: the driver
then makes the kernel forget everything it holds); the task makes the kernel forget them (attributes
and cached pages of an inode, or one directory entry) and sends WATCH again, which tells the
server the kernel is clean: only then does the application's call return. The invalidations
run in a worker thread because the kernel may block them (on dirty pages to write back, or a
request in progress on the directory) until this very driver has answered other requests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from channel.protocol.errors import ChannelClosed
from channel.protocol.opcodes import Op

log = logging.getLogger(__name__)

INODE = 0
ENTRY = 1
ALL = 2


def apply(notices: list[Any]) -> None:
    """Make the kernel forget what `notices` name (blocking; in a worker thread)."""
    for notice in notices:
        with contextlib.suppress(OSError):  # ENOENT: the kernel no longer caches it
            if notice[0] == INODE:
                pyfuse3.invalidate_inode(notice[1])
            elif notice[0] == ENTRY:
                pyfuse3.invalidate_entry(notice[1], notice[2])


async def keep_watching(
    link: Any, expand: Callable[[list[Any]], list[Any]], external: bool
) -> None:
    """Until cancelled: WATCH, invalidate, WATCH again (across server restarts too).
    `expand` drops what the driver itself keeps of the notices' objects and turns [ALL]
    into a notice for each object the kernel holds (RingOperations.forget_cached).
    `external`: also hear of changes made in the export behind the server's back (a mode
    whose kernel caches names or attributes; cache=none asks the server every time, and an
    invalidation racing its GETATTR would only make the kernel drop that fresh answer)."""
    while True:
        try:
            reply = await link.call(Op.WATCH, [True] if external else None)
        except ChannelClosed:
            await link.wait_up()
            continue
        if reply.status < 0:
            log.warning("the server refused WATCH (%d); application changes may be cached",
                        reply.status)  # fmt: skip
            return
        await trio.to_thread.run_sync(apply, expand(reply.body or []))
