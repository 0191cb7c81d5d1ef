"""Every limit of the channel, defined once.

Each number says why it is what it is; the server treats a region as hostile input, so every
length and count read from shared memory is checked against these before it is used.
"""

from __future__ import annotations

#: Wire and region version; both sides refuse a peer that speaks another one.
PROTOCOL_VERSION = 1

#: Ring sizes are powers of two so that a 64-bit counter maps to a slot with a mask.
MIN_RING_ENTRIES = 2
MAX_RING_ENTRIES = 4096

#: A slot carries a fixed header plus a msgpack body. 8 KiB fits the largest body we send
#: (a symlink target of PATH_MAX plus a name of NAME_MAX), so no body spills into a data buffer.
MIN_SLOT_SIZE = 256
MAX_SLOT_SIZE = 64 * 1024

#: Data buffers hold bulk payloads. 1 MiB is FUSE's largest read/write with max_pages=256.
MIN_BUFFER_SIZE = 4096
MAX_BUFFER_SIZE = 4 * 1024 * 1024
MAX_BUFFERS = 1024

#: The whole region, so that a client cannot make the server map something absurd.
MAX_REGION_SIZE = 1 << 31

#: Linux's own limits, enforced by the server before it makes a system call.
NAME_MAX = 255
PATH_MAX = 4096
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024

#: The handshake's one message each way; a hello larger than this is garbage.
MAX_HANDSHAKE_MESSAGE = 64 * 1024
#: File descriptors a hello may carry (memfd, SQ eventfd, CQ eventfd).
HANDSHAKE_FDS = 3
#: Seconds a peer has to finish its handshake before the server hangs up.
HANDSHAKE_TIMEOUT = 5.0

#: Default spin before a consumer parks (seconds). Spinning costs a core on a two-core machine,
#: so the interval is short: long enough to catch the next command of a busy stream.
DEFAULT_IDLE_SPIN = 0.001
#: A client waiting for a command that moves more data than this parks at once instead of
#: spinning: the server runs such commands in worker threads, which need the CPU.
SPIN_WORTHY_BYTES = 256 * 1024
#: Upper bound on one sleep of a parked consumer (seconds). The wake-up protocol is fenced,
#: but should a wake-up ever be lost, no command waits longer than this.
SLEEP_BOUND = 0.010
#: Upper bound on one sleep of an idle server poller (seconds). A client waiting for a command
#: that still sits unconsumed on the SQ rings the SQ eventfd again after each of its own
#: SLEEP_BOUND sleeps, so no command waits longer than SLEEP_BOUND even if a wake-up were lost;
#: the server itself need not wake 100 times a second while nobody talks to it (each trio
#: wake-up costs a few hundred microseconds of CPU on a small machine).
IDLE_POLLER_SLEEP = 0.25

#: Entries per RESTORE_INODES command: bounded work per command (each is a lookup).
MAX_RESTORE_BATCH = 256

#: Channels one user may hold open on a server at once, and handshakes in progress at once:
#: a client must not make the server map regions or hold tasks without bound.
MAX_CHANNELS_PER_UID = 64
MAX_PENDING_HANDSHAKES = 64

#: O_PATH descriptors the server keeps cached for the inodes the kernel knows (see
#: backend_server.inodes): at most this many, and at most 1/INODE_FD_SHARE of the soft
#: RLIMIT_NOFILE, so that open files, channels and sockets always keep the rest. An inode
#: outside the cache costs one open_by_handle_at and one fstat (~4 us) when it is next used.
INODE_FD_CACHE = 1024
INODE_FD_SHARE = 4
