"""Letting go of a shared-memory region promptly, on either side."""

from __future__ import annotations

from contextlib import suppress

from channel.protocol.sides import ClientSide, ServerSide


def release_views(side: ClientSide | ServerSide) -> None:
    """Release the memoryviews a side holds into its region, so that `Region.close` can
    really unmap it (and close the mapping's descriptor) now rather than at some later
    garbage collection. Views still exported elsewhere stay valid until dropped."""
    views = [*side.buffers, *side.sq.slots, *side.cq.slots, side.stats]
    for view in views:
        with suppress(BufferError):
            view.release()
