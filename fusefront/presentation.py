"""How ownership and modes are presented: `-o uid=N,gid=N,umask=NNN`, as sshfs has them.

These change only what the kernel is told (stat, and the attributes readdir hands over): the
export's files keep their real owner and mode, and the server still checks every operation
against those, as the caller (the kernel does not check permissions itself unless the mount
is `default_permissions`; then it checks the presented owner and mode first, and the server
the real ones after, so both must allow). `umask=` works as in sshfs and libfuse: every
object shows the permission bits `0777 & ~umask` whatever its own are (setuid, setgid and
sticky bits are not shown); the file type is kept.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from channel.protocol.opcodes import ATTR_FIELDS

_MODE, _UID, _GID = (ATTR_FIELDS.index(name) for name in ("mode", "uid", "gid"))


@dataclass(frozen=True, slots=True)
class Presentation:
    """None leaves the real value."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None

    def apply(self, attr: Sequence[int]) -> Sequence[int]:
        """An `attr` list (ATTR_FIELDS order) as the kernel is to see it."""
        if self.uid is None and self.gid is None and self.umask is None:
            return attr
        shown = list(attr)
        if self.uid is not None:
            shown[_UID] = self.uid
        if self.gid is not None:
            shown[_GID] = self.gid
        if self.umask is not None:
            shown[_MODE] = stat.S_IFMT(shown[_MODE]) | (0o777 & ~self.umask)
        return shown
