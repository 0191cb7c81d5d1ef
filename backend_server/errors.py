"""The errno helper every operation raises through: `fail(code)` is the one way the server's
modules signal an errno (the dispatcher turns the OSError into the negative status)."""

from __future__ import annotations

import os


def fail(code: int, what: str = "") -> OSError:
    """An OSError carrying `code`: the one way operations signal an errno."""
    return OSError(code, os.strerror(code), what) if what else OSError(code, os.strerror(code))
