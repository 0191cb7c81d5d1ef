"""What every server-side channel shares, over either transport: its close callbacks."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_close_callbacks(channel: object, callbacks: list[Callable[..., None]]) -> None:
    """Call each `on_close` callback once. The contract is a callback without arguments; one
    that requires a positional argument gets the channel (so `cb(channel)` styles work too)."""
    for callback in callbacks:
        try:
            try:
                inspect.signature(callback).bind()
                takes_channel = False
            except TypeError:
                takes_channel = True
            except ValueError:  # no signature available (some builtins)
                takes_channel = False
            if takes_channel:
                callback(channel)
            else:
                callback()
        except Exception:
            log.exception("on_close callback %r failed", callback)
