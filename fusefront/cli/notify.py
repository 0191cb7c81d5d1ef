"""systemd readiness notification (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.

The protocol is a single `sd_notify` datagram; ten lines of socket code are clearer than a
dependency for it (the `sdnotify` package does exactly this). A path starting with `@` names
an abstract socket. Without `$NOTIFY_SOCKET` nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket


def notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:  # the mount itself is fine: say so, do not tear it down
        logging.getLogger(__name__).warning("cannot notify %s: %s", path, exc.strerror)
