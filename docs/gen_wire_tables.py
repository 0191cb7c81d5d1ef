"""Generate the tables of docs/wire-format.md from the code's one definition of each fact.

    python docs/gen_wire_tables.py           # rewrite the tables in docs/wire-format.md
    python docs/gen_wire_tables.py --check   # exit 1 if they are out of date

Every number comes from `channel.protocol`'s `layout`, `codec`, `frames`, `opcodes` and
`limits` (and the geometries the driver and application channels use); only the one-line
meanings of header fields are written here, and a header field without one stops the
generator, so a new field cannot reach the document undescribed. In the markdown, each table
sits between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->`.
`tests/project/test_docs.py` fails when the document differs from what this script writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from channel.protocol import codec, frames, layout, limits, opcodes
from channel.protocol.handshake import LENGTH
from channel.protocol.layout import ClientStat, Geometry, ServerStat
from fusefront.direct import DIRECT_GEOMETRY
from fusefront.mount import DRIVER_GEOMETRY

DOC = Path(__file__).resolve().parent / "wire-format.md"

_TYPES = {"Q": "u64", "q": "i64", "I": "u32", "i": "i32", "H": "u16", "h": "i16"}

#: What each header field means. A field the code adds without a line here stops the script.
COMMAND_MEANINGS = {
    "tag": "chosen by the client, unique among its commands in flight; echoed by the completion",
    "opcode": "an `Op` value (table below)",
    "flags": "per opcode: FSYNC/FSYNCDIR datasync, else 0",
    "body_len": "bytes of msgpack body right after the header; at most slot size - header",
    "token": "the channel's token from the handshake; a mismatch is answered -EACCES",
    "buf": "data-buffer index, or -1 (`NO_BUFFER`): no buffer",
    "data_len": "bytes of input data in the buffer (WRITE, SETXATTR); at most `buf_size`, "
    "0 without a buffer",
    "ino": "inode number (parent directory for name operations)",
    "fh": "file or directory handle number, per channel",
    "offset": "file offset, or READDIR position",
    "size": "reply data wanted (READ, READDIR, GETXATTR, LISTXATTR) or FALLOCATE's length; "
    "at most `buf_size` when `buf` is set",
    "uid": "caller's uid (driver channel only; ignored on application channels)",
    "gid": "caller's gid (driver channel only)",
    "pid": "caller's pid (driver channel only; the server reads its supplementary groups)",
    "umask": "caller's umask, applied by the server to new files",
    "reserved": "0",
}
COMPLETION_MEANINGS = {
    "tag": "the command's tag",
    "status": "0, or a negative errno",
    "body_len": "bytes of msgpack body right after the header",
    "data_len": "bytes of reply data the server placed in the command's buffer",
    "buf": "the command's data-buffer index, echoed (or -1)",
    "value": "a small result: a new handle number, bytes written, an xattr length",
}


# -- helpers --------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _size(n: int) -> str:
    """`n` bytes, with KiB/MiB/GiB when it is a whole number of them."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n} ({n // scale} {unit})"
    return str(n)


def struct_fields(fmt: str, names: Sequence[str]) -> list[tuple[str, str, int, int]]:
    """(name, type, offset, size) of each field of a little-endian struct format."""
    if not fmt.startswith("<"):
        raise ValueError(f"{fmt!r}: wire structs are little-endian without padding")
    codes: list[str] = []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        if code == "s":
            codes.append(f"{count or 1}s")
        else:
            codes.extend(code for _ in range(int(count or 1)))
    if len(codes) != len(names):
        raise ValueError(f"{fmt!r} has {len(codes)} fields, {len(names)} names given")
    fields, prefix = [], "<"
    for name, code in zip(names, codes, strict=True):
        offset = struct.calcsize(prefix)
        prefix += code
        kind = f"bytes[{code[:-1]}]" if code.endswith("s") else _TYPES[code]
        fields.append((name, kind, offset, struct.calcsize(prefix) - offset))
    return fields


def _header_table(fmt: str, names: Sequence[str], meanings: dict[str, str]) -> str:
    missing = [n for n in names if n not in meanings]
    if missing:
        raise SystemExit(f"gen_wire_tables: describe the new header fields {missing} here")
    rows = [
        (f"`{name}`", kind, offset, size, meanings[name])
        for name, kind, offset, size in struct_fields(fmt, names)
    ]
    return _table(("field", "type", "offset", "size", "meaning"), rows)


# -- the tables -----------------------------------------------------------------------------


def picture() -> str:
    control_end = layout.CQ_FLAGS + layout.CACHE_LINE - 1
    client_end = layout.CLIENT_STATS + layout.STATS_BLOCK - 1
    server_end = layout.SERVER_STATS + layout.STATS_BLOCK - 1
    identity_end = layout.IDENTITY_OFFSET + layout.IDENTITY.size - 1
    return "\n".join(
        [
            "```",
            f"offset 0              header page (HEADER_SIZE = {layout.HEADER_SIZE} bytes)",
            f"  {layout.IDENTITY_OFFSET} .. {identity_end}".ljust(24) + "identity line",
            f"  {layout.SQ_HEAD} .. {control_end}".ljust(24)
            + f"ring control words, one per {layout.CACHE_LINE}-byte cache line",
            f"  {layout.CLIENT_STATS} .. {client_end}".ljust(24)
            + "client statistics (written by the client only)",
            f"  {layout.SERVER_STATS} .. {server_end}".ljust(24)
            + "server statistics (written by the server only)",
            "HEADER_SIZE           SQ slots: sq_entries x slot_size",
            "                      CQ slots: cq_entries x slot_size",
            "next page boundary    data buffers: buf_count x buf_size",
            "```",
        ]
    )


def identity_table() -> str:
    names = ["magic", "version", *(f.name for f in dataclasses.fields(Geometry))]
    values = {"magic": f"`{layout.MAGIC!r}`", "version": f"{limits.PROTOCOL_VERSION}"}
    rows = [
        (f"`{name}`", kind, layout.IDENTITY_OFFSET + offset, size, values.get(name, "geometry"))
        for name, kind, offset, size in struct_fields(layout.IDENTITY.format, names)
    ]
    return _table(("field", "type", "offset", "size", "value"), rows)


def control_table() -> str:
    words = [
        ("SQ_HEAD", "SQ head", "server (SQ consumer)"),
        ("SQ_TAIL", "SQ tail", "client (SQ producer)"),
        ("SQ_FLAGS", "SQ flags", "server (SQ consumer)"),
        ("CQ_HEAD", "CQ head", "client (CQ consumer)"),
        ("CQ_TAIL", "CQ tail", "server (CQ producer)"),
        ("CQ_FLAGS", "CQ flags", "client (CQ consumer)"),
    ]
    rows = []
    for constant, what, writer in words:
        offset = getattr(layout, constant)
        rows.append((f"`{constant}`", what, offset, offset // layout.CACHE_LINE, writer))
    table = _table(("constant", "word (u64)", "offset", "cache line", "written by"), rows)
    return f"{table}\n\nFlags bit: `NEED_WAKEUP` = {layout.NEED_WAKEUP}."


def _stat_rows(cls: type, base: int) -> list[tuple[object, ...]]:
    arrays = {"LATENCY": layout.LATENCY_BUCKETS, "BY_OPCODE": layout.OPCODE_COUNTERS}
    members = sorted(
        ((value, name) for name, value in vars(cls).items() if name.isupper()),
    )
    return [(f"`{name}`", index, base + 8 * index, arrays.get(name, 1)) for index, name in members]


def stats_table() -> str:
    header = ("counter", "word index", "byte offset", "words")
    client = _table(header, _stat_rows(ClientStat, layout.CLIENT_STATS))
    server = _table(header, _stat_rows(ServerStat, layout.SERVER_STATS))
    return (
        f"Client block (`ClientStat`, from byte {layout.CLIENT_STATS}, "
        f"{layout.STATS_BLOCK} bytes):\n\n{client}\n\n"
        f"Server block (`ServerStat`, from byte {layout.SERVER_STATS}, "
        f"{layout.STATS_BLOCK} bytes):\n\n{server}"
    )


def geometry_table() -> str:
    geometries = [
        ("`Geometry()` (default)", Geometry()),
        ("`DRIVER_GEOMETRY` (fusefront.mount)", DRIVER_GEOMETRY),
        ("`DIRECT_GEOMETRY` (fusefront.direct)", DIRECT_GEOMETRY),
    ]
    rows = [
        (
            name, g.sq_entries, g.cq_entries, g.slot_size, g.buf_count, _size(g.buf_size),
            g.sq_offset, g.cq_offset, g.buffers_offset, _size(g.region_size),
        )
        for name, g in geometries
    ]  # fmt: skip
    return _table(
        (
            "geometry", "sq_entries", "cq_entries", "slot_size", "buf_count", "buf_size",
            "SQ slots at", "CQ slots at", "buffers at", "region size",
        ),
        rows,
    )  # fmt: skip


def command_table() -> str:
    names = [f for f in codec.Command._fields if f != "body"]
    table = _header_table(codec.COMMAND_HEADER.format, names, COMMAND_MEANINGS)
    return f"{table}\n\nTotal: {codec.COMMAND_HEADER.size} bytes (`COMMAND_HEADER`)."


def completion_table() -> str:
    names = [f for f in codec.Completion._fields if f != "body"]
    table = _header_table(codec.COMPLETION_HEADER.format, names, COMPLETION_MEANINGS)
    return f"{table}\n\nTotal: {codec.COMPLETION_HEADER.size} bytes (`COMPLETION_HEADER`)."


def attr_table() -> str:
    return _table(("index", "field"), enumerate(f"`{f}`" for f in opcodes.ATTR_FIELDS))


def documented_opcodes() -> dict[str, tuple[str, str, str]]:
    """The table of `channel.protocol.opcodes`' docstring: name -> (header fields, body, reply)."""
    doc = opcodes.__doc__ or ""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or set(cells[0]) <= set("-"):
            continue
        if cells[0] == "opcode":
            continue
        for name in cells[0].split("/"):
            rows[name.strip()] = (cells[1], cells[2], cells[3])
    return rows


def opcode_table() -> str:
    documented = documented_opcodes()
    names = {op.name for op in opcodes.Op}
    if set(documented) != names:
        raise SystemExit(
            "gen_wire_tables: channel.protocol.opcodes' table and Op disagree: "
            f"undocumented {sorted(names - set(documented))}, "
            f"unknown {sorted(set(documented) - names)}"
        )
    rows = []
    for op in opcodes.Op:
        fields, body, reply = (_code(cell) for cell in documented[op.name])
        rows.append((op.value, f"`{op.name}`", fields, body, reply))
    return _table(("value", "opcode", "header fields used", "body", "reply body / value"), rows)


def _code(cell: str) -> str:
    """A cell of the docstring table, with a leading msgpack shape (`[...]`, `{...}`) set as
    code."""
    if not cell or cell[0] not in "[{":
        return cell or "-"
    depth = 0
    for i, char in enumerate(cell):
        depth += char in "[{"
        depth -= char in "]}"
        if depth == 0:
            return f"`{cell[: i + 1]}`{cell[i + 1 :]}"
    return cell


def limit_comments() -> dict[str, str]:
    """Each constant of channel.protocol.limits with the `#:` comment above it (or above the
    group of constants it starts, when several follow one comment)."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    current = ""
    for line in inspect.getsource(limits).splitlines():
        if line.startswith("#:"):
            if not pending:
                current = ""
            pending.append(line[2:].strip())
            continue
        match = re.match(r"([A-Z_][A-Z0-9_]*) = ", line)
        if match:
            if pending:
                current = " ".join(pending)
                pending = []
            comments[match.group(1)] = current
        elif not line.strip():
            pending, current = [], ""
    return comments


def limits_table() -> str:
    rows = []
    previous = ""
    for name, why in limit_comments().items():
        rows.append((f"`{name}`", getattr(limits, name), "(as above)" if why == previous else why))
        previous = why
    return _table(("limit", "value", "why"), rows)


def derived_table() -> str:
    slot = Geometry().slot_size
    rows = [
        ("`COMMAND_HEADER.size`", codec.COMMAND_HEADER.size, "channel.protocol"),
        ("`COMPLETION_HEADER.size`", codec.COMPLETION_HEADER.size, "channel.protocol"),
        ("`TOKEN_SIZE`", codec.TOKEN_SIZE, "channel.protocol"),
        ("`NO_BUFFER`", codec.NO_BUFFER, "channel.protocol"),
        (
            f"largest command body in a {slot}-byte slot",
            codec.max_command_body(slot),
            "`max_command_body`",
        ),
        (
            f"largest completion body in a {slot}-byte slot",
            codec.max_completion_body(slot),
            "`max_completion_body`",
        ),
        (
            "handshake length prefix",
            f"`{LENGTH.format}` ({LENGTH.size} bytes)",
            "channel.protocol.handshake",
        ),
        (
            "socket transport: one frame's virtual buffer",
            _size(frames.BUF_SIZE),
            "channel.transport.socket_client",
        ),
        (
            "socket transport: largest frame",
            _size(frames.MAX_FRAME),
            "channel.transport.socket_client",
        ),
    ]
    return _table(("size", "value", "defined in"), rows)


TABLES: dict[str, Callable[[], str]] = {
    "picture": picture,
    "identity": identity_table,
    "control": control_table,
    "stats": stats_table,
    "geometries": geometry_table,
    "command": command_table,
    "completion": completion_table,
    "attr": attr_table,
    "opcodes": opcode_table,
    "limits": limits_table,
    "sizes": derived_table,
}

_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z]+) -->\n)(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def render(text: str) -> str:
    """`text` with every generated block rewritten from the code."""
    seen: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"gen_wire_tables: no table named {name!r}")
        seen.append(name)
        return f"{match.group(1)}{TABLES[name]()}\n{match.group(4)}"

    result = _BLOCK.sub(fill, text)
    missing = sorted(set(TABLES) - set(seen))
    if missing:
        raise SystemExit(f"gen_wire_tables: {DOC.name} lacks the blocks {missing}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report whether up to date")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC} is out of date: run python docs/gen_wire_tables.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        DOC.write_text(wanted, encoding="utf-8")
        print(f"rewrote the tables of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
