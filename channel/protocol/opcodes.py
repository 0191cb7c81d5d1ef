"""Opcodes: the names of the operations a command can carry, and what each one's body holds.

The channel moves these without interpreting them; the server gives them meaning. Hot fields
travel in the fixed command header (`ino`, `fh`, `offset`, `size`, the caller's uid/gid/pid/umask);
the msgpack body holds the rest, as listed. Names and paths are bytes (Linux names are bytes).
Bulk data (write payloads, read results, directory pages, xattr values) travels in a data buffer.

| opcode      | header fields used            | body                                  | reply body / value      |
|-------------|-------------------------------|---------------------------------------|-------------------------|
| NOP         | -                             | anything (echoed)                     | the same body           |
| LOOKUP      | ino=parent                    | [name]                                | entry                   |
| FORGET      | ino                           | [nlookup]                             | -                       |
| BATCH_FORGET| -                             | [[ino, nlookup], ...]                 | -                       |
| GETATTR     | ino, fh (0: none)             | -                                     | attr                    |
| SETATTR     | ino, fh                       | {mode,uid,gid,size,atime,mtime...}    | attr                    |
| READLINK    | ino                           | -                                     | [target]                |
| MKNOD       | ino=parent, umask             | [name, mode, rdev]                    | entry                   |
| MKDIR       | ino=parent, umask             | [name, mode]                          | entry                   |
| UNLINK      | ino=parent                    | [name]                                | -                       |
| RMDIR       | ino=parent                    | [name]                                | -                       |
| SYMLINK     | ino=parent                    | [name, target]                        | entry                   |
| RENAME      | ino=old parent                | [name, new_parent, new_name, flags]   | -                       |
| LINK        | ino                           | [new_parent, new_name]                | entry                   |
| OPEN        | ino                           | [flags]                               | attr (opened), value=fh |
| CREATE      | ino=parent, umask             | [name, mode, flags]                   | entry, value=fh         |
| READ        | fh, offset, size; buffer out  | -                                     | data in buffer          |
| WRITE       | fh, offset; buffer in         | -                                     | value=bytes written     |
| FLUSH       | fh                            | -                                     | -                       |
| RELEASE     | fh                            | -                                     | attr (at close)         |
| FSYNC       | fh, flags=datasync            | -                                     | -                       |
| OPENDIR     | ino                           | -                                     | value=fh                |
| READDIR     | fh, offset; buffer out        | -                                     | [count, ends], buf      |
| RELEASEDIR  | fh                            | -                                     | -                       |
| FSYNCDIR    | fh, flags=datasync            | -                                     | -                       |
| STATFS      | ino                           | -                                     | statvfs fields          |
| SETXATTR    | ino; buffer in (value)        | [name, flags]                         | -                       |
| GETXATTR    | ino, size; buffer out         | [name]                                | value=length            |
| LISTXATTR   | ino, size; buffer out         | -                                     | value=length            |
| REMOVEXATTR | ino                           | [name]                                | -                       |
| ACCESS      | ino                           | [mask]                                | -                       |
| FALLOCATE   | fh, offset, size              | [mode]                                | -                       |
| GETLK/SETLK | fh                            | lock description                      | lock description        |
| FLOCK       | fh                            | [operation]                           | -                       |
| RESTORE_INODES | - (driver only)            | [[parent, name, number, nlookup], ...]| [status per entry]      |
| RESTORE_HANDLE | ino, fh (driver only)      | [flags]                               | -                       |
| RESOLVE     | ino=start directory           | [[name, ...], register]               | entry, or attr if not register |
| WATCH       | - (driver only)               | [] or [external]                      | [notice, ...] (backend_server.coherence) |
"""

from __future__ import annotations

import os
from enum import IntEnum


class Op(IntEnum):
    NOP = 0
    LOOKUP = 1
    FORGET = 2
    BATCH_FORGET = 3
    GETATTR = 4
    SETATTR = 5
    READLINK = 6
    MKNOD = 7
    MKDIR = 8
    UNLINK = 9
    RMDIR = 10
    SYMLINK = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    CREATE = 15
    READ = 16
    WRITE = 17
    FLUSH = 18
    RELEASE = 19
    FSYNC = 20
    OPENDIR = 21
    READDIR = 22
    RELEASEDIR = 23
    FSYNCDIR = 24
    STATFS = 25
    SETXATTR = 26
    GETXATTR = 27
    LISTXATTR = 28
    REMOVEXATTR = 29
    ACCESS = 30
    FALLOCATE = 31
    GETLK = 32
    SETLK = 33
    FLOCK = 34
    # Recovery after a server restart: the trusted driver re-registers what the kernel holds.
    RESTORE_INODES = 64
    RESTORE_HANDLE = 65
    # Application channels: a path in one command; the mount's caches kept true.
    RESOLVE = 66
    WATCH = 67


#: Every opcode value, for O(1) validation of a header's opcode field.
OPCODE_VALUES = frozenset(int(op) for op in Op)

#: What an operation does beyond answering, for the server's checks that apply to many
#: operations at once (they are made in one place, before the operation runs).
#: MUTATING: changes the file system (data, metadata, names); a channel of a read-only mount
#: gets EROFS for each of them. OPEN is one only when it opens for writing or truncates.
MUTATING = frozenset(
    {
        Op.SETATTR, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.SYMLINK, Op.RENAME, Op.LINK,
        Op.CREATE, Op.WRITE, Op.SETXATTR, Op.REMOVEXATTR, Op.FALLOCATE,
    }
)  # fmt: skip
#: May leave the server holding one more descriptor: an inode's (a lookup of something new)
#: or a handle's. Refused (ENFILE) on application channels once the server is short of them.
HOLDS_DESCRIPTOR = frozenset(
    {
        Op.LOOKUP, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.OPEN, Op.CREATE, Op.OPENDIR,
        Op.READDIR, Op.RESOLVE, Op.RESTORE_INODES, Op.RESTORE_HANDLE,
    }
)  # fmt: skip
#: Opens a file or directory handle (counted against the channel's and its user's limits).
OPENS_HANDLE = frozenset({Op.OPEN, Op.CREATE, Op.OPENDIR, Op.RESTORE_HANDLE})


def mutates(opcode: int, body: object) -> bool:
    """Does this command change the file system? (OPEN's body is [flags].)"""
    if opcode in MUTATING:
        return True
    if opcode == Op.OPEN and isinstance(body, list) and body and type(body[0]) is int:
        flags = body[0]
        return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
    return False


#: Layout of an `attr` list in reply bodies (index constants, so both sides agree):
#: [ino, mode, nlink, uid, gid, rdev, size, blocks, blksize, atime_ns, mtime_ns, ctime_ns]
ATTR_FIELDS = (
    "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blocks", "blksize",
    "atime_ns", "mtime_ns", "ctime_ns",
)  # fmt: skip
#: An `entry` reply body is [attr, generation]; the entry's lookup count was incremented.
#: READDIR's buffer holds msgpack [[name, attr, next_offset], ...]; each returned entry's
#: lookup count was incremented (the driver FORGETs the ones it could not pass on). Its reply
#: body is [count, ends]: `ends` is true when no entry follows this page in the listing.
#: READDIR header flag READDIR_DOTS: the listing begins with `.` and `..` (for the kernel,
#: which shows them to applications); no lookup is counted for those two, so they are neither
#: remembered nor forgotten.
#: SETATTR body keys: "mode", "uid", "gid", "size", "atime_ns", "mtime_ns" (int, or the
#: strings "now"; an absent key means omit).


READDIR_DOTS = 1
#: The two names a READDIR_DOTS listing carries that count no lookup.
DOT_ENTRIES = (b".", b"..")
#: The root directory's inode number on every channel (FUSE's own root id).
ROOT_INO = 1
#: Bytes of directory entries a client asks for per READDIR command.
READDIR_PAGE = 64 * 1024


def readdir_page_ends(body: object) -> bool:
    """Does a READDIR reply body say that no entries follow its page?"""
    return isinstance(body, list) and len(body) > 1 and body[1] is True
