"""Every FUSE request gets an answer, and no request can end the driver.

pyfuse3 3.5 catches only `FUSEError` around a request handler (`handlers.pxi`: each
`fuse_*_async` has `except FUSEError`). Any other exception leaves the handler's coroutine,
is raised by `await py_retval` in `_session_loop` (`internal.pxi`) into the nursery of
`pyfuse3.main()`, which cancels every other worker and returns it to its caller: the driver
exits, the kernel aborts the connection and the mount vanishes (later writes then land in the
bare mount-point directory). `forget` is worse: pyfuse3 calls it outside any `try` (it has no
reply; `fuse_reply_none` is sent before the coroutine runs), so even a `FUSEError` from it
ends the driver.

`answer_every_request` wraps each request handler a class defines, once, at the class: an
unexpected exception is logged with its traceback and answered with EIO (forget, which has
no reply, is only logged). `trio.Cancelled` and `KeyboardInterrupt` are BaseExceptions and
pass, so shutdown still works.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pyfuse3
from pyfuse3 import FUSEError

log = logging.getLogger(__name__)

_Class = TypeVar("_Class", bound=type)
_Handler = Callable[..., Coroutine[Any, Any, Any]]

#: Handlers whose request has no reply: a failure can only be logged.
NO_REPLY = frozenset({"forget"})
#: The request handlers pyfuse3 calls: the coroutine methods of its `Operations`.
HANDLERS = frozenset(
    name for name, method in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(method)
)


def _answering(name: str, handler: _Handler) -> _Handler:
    if name in NO_REPLY:

        @functools.wraps(handler)
        async def unanswered(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            except Exception:
                log.exception("%s failed; the request has no reply", name)
                return None

        return unanswered

    @functools.wraps(handler)
    async def answered(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except FUSEError:
            raise
        except Exception:
            log.exception("%s failed; answered EIO", name)
            raise FUSEError(errno.EIO) from None

    return answered


def guarded(name: str) -> Callable[[_Handler], _Handler]:
    """Wrap a coroutine that the request handler `name` delegates to, as the class
    decorator wraps handlers (for a handler left `unguarded` for its fast path)."""
    return functools.partial(_answering, name)


def unguarded(handler: _Handler) -> _Handler:
    """Leave this handler unwrapped: it answers some requests before it can fail (no
    call, no lookup that may raise) and awaits a `guarded` coroutine for the rest. Saves
    the wrapper's coroutine on the hottest request (fusefront.driver's getxattr)."""
    handler.__dict__["unguarded"] = True
    return handler


def answer_every_request(cls: _Class) -> _Class:
    """Class decorator: wrap every request handler `cls` itself defines (see module doc)."""
    for name, method in list(vars(cls).items()):
        if getattr(method, "unguarded", False):
            continue
        if name in HANDLERS and inspect.iscoroutinefunction(method):
            setattr(cls, name, _answering(name, method))
    return cls
