"""The compiled core is what runs unless RINGFS_PURE=1, and its fixed header layout is
channel/protocol.py's."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

from channel.protocol import _core, sides, sides_compiled, sides_pure
from channel.protocol.codec import COMMAND_HEADER, COMPLETION_HEADER


def test_this_process_runs_the_selected_implementation() -> None:
    if os.environ.get("RINGFS_PURE") == "1":
        assert sides.IMPLEMENTATION == "pure"
        assert sides.ClientSide is sides_pure.ClientSide
        assert sides.ServerSide is sides_pure.ServerSide
    else:
        assert sides.IMPLEMENTATION == "compiled"
        assert sides.ClientSide is sides_compiled.ClientSide
        assert issubclass(sides.ClientSide, _core.ClientCore)
        assert issubclass(sides.ServerSide, _core.ServerCore)
        assert sides.ClientSide.post is _core.ClientCore.post  # the hot paths are the C ones
        # the server's batch calls too: a method missing from the build would otherwise be
        # inherited from the reference without a word
        for name in ("take", "take_many", "complete", "stage", "publish"):
            assert getattr(sides.ServerSide, name) is getattr(_core.ServerCore, name), name


def test_environment_selects_the_implementation() -> None:
    probe = (
        "import channel.protocol.sides as s; print(s.IMPLEMENTATION, type(s.sq_producer).__name__)"
    )
    for pure, expected in (("1", "pure"), ("", "compiled"), ("0", "compiled")):
        env = {**os.environ, "RINGFS_PURE": pure}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[0] == expected, (pure, out)


def _offsets(fmt: str) -> list[int]:
    """Byte offset of each field of a little-endian struct format, then its size."""
    codes: list[str] = []
    i, body = 0, fmt[1:]
    while i < len(body):
        j = i
        while body[j].isdigit():
            j += 1
        codes.append(body[i : j + 1])
        i = j + 1
    return [struct.calcsize("<" + "".join(codes[:k])) for k in range(len(codes) + 1)]


def test_c_header_layout_is_protocol_py() -> None:
    assert list(_core.HEADER_LAYOUT["command"]) == _offsets(COMMAND_HEADER.format)
    assert list(_core.HEADER_LAYOUT["completion"]) == _offsets(COMPLETION_HEADER.format)
    assert _core.HEADER_LAYOUT["command"][-1] == COMMAND_HEADER.size
    assert _core.HEADER_LAYOUT["completion"][-1] == COMPLETION_HEADER.size
