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

#: The driver channel's slots. 8 KiB holds every fixed-shape command the driver sends (a
#: symlink target of PATH_MAX plus a name; the kernel looks a name up before it renames to
#: it or links it, and the server refuses names over NAME_MAX, so two long names never meet
#: in one body); commands that grow with the kernel's request (BATCH_FORGET, RESTORE_INODES)
#: are split into bodies that fit (fusefront.bodies).
DRIVER_SLOT_SIZE = 8 * 1024

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
#: Seconds a peer has for its whole handshake, from accept() to the answer, the wait for a
#: handshake slot included; a slow or silent peer is then refused ("timed out") and hung up on.
HANDSHAKE_TIMEOUT = 5.0

#: Default spin before a consumer parks (seconds). Spinning costs a core on a two-core machine,
#: so the interval is short: long enough to catch the next command of a busy stream.
DEFAULT_IDLE_SPIN = 0.001
#: A client waiting for a command that moves more data than this parks at once instead of
#: spinning: the server runs such commands in worker threads, which need the CPU.
SPIN_WORTHY_BYTES = 256 * 1024
#: How long a trio caller polls the CQ for its own answer before it parks on its event
#: (seconds): a busy server answers a small command in a few microseconds, a trio
#: scheduler pass costs about as much, and the park-and-wake path several passes.
INLINE_REAP_SPIN = 0.000_050
#: A trio caller whose answers keep coming inline passes through the scheduler once every
#: this many calls, so that a loop of calls cannot starve the other tasks of its thread.
INLINE_REAP_RUN = 16
#: Upper bound on one sleep of a parked consumer (seconds). The wake-up protocol is fenced,
#: but should a wake-up ever be lost, no command waits longer than this.
SLEEP_BOUND = 0.010
#: Upper bound on one sleep of an idle server poller (seconds). A client waiting for a command
#: that still sits unconsumed on the SQ rings the SQ eventfd again after each of its own
#: SLEEP_BOUND sleeps, so no command waits longer than SLEEP_BOUND even if a wake-up were lost;
#: the server itself need not wake 100 times a second while nobody talks to it (each trio
#: wake-up costs 0.3 to over 5 ms of CPU on a small, busy virtual machine, where the host's
#: throttling after a burst is charged to whoever runs: at 0.25 s an idle mount took 2-4% of
#: a core here, at 1 s 1.2-3.5%, at 3 s 1.0-1.5%). A client reaping completions sleeps at
#: most this long too; the server rings its CQ eventfd whenever it parked, so this bounds
#: only a lost wake-up.
IDLE_POLLER_SLEEP = 3.0

#: Entries per RESTORE_INODES command: bounded work per command (each is a lookup).
MAX_RESTORE_BATCH = 256

#: Channels one user may hold open on a server (or through one driver) at once, and
#: handshakes in progress at once: a client must not make the server map regions or hold
#: tasks without bound. A channel counts against the identity it is served as (the
#: application's, for one a driver forwards), never against the forwarding driver's.
MAX_CHANNELS_PER_UID = 64
MAX_PENDING_HANDSHAKES = 64
#: Connections of one user that may wait for, or be in, their handshake at once (per server,
#: and per driver control socket). More are refused at once, so that idle connections of one
#: user hold at most this many of the MAX_PENDING_HANDSHAKES slots everyone shares.
MAX_HANDSHAKES_PER_UID = 8

#: Open file and directory handles one application channel may hold (a process's default
#: RLIMIT_NOFILE), and one user's application channels together; past either, OPEN, CREATE
#: and OPENDIR fail with EMFILE. Handles of a driver's channel are the kernel's opens, each
#: already bounded by its process's own RLIMIT_NOFILE, and are not counted per user.
MAX_HANDLES_PER_CHANNEL = 1024
MAX_HANDLES_PER_UID = 4096

#: Descriptors a server or a driver keeps for itself whatever applications do: a server
#: refuses application commands that would hold another descriptor (ENFILE), and new
#: connections, once fewer than this many are left below its RLIMIT_NOFILE; a driver
#: refuses new control connections likewise. What is left serves the mount's own channel
#: (its lookups and opens, a reconnection after a server restart).
RESERVED_FDS = 256
#: Descriptors one connection may hold in a server (socket, memfd, two eventfds) and in a
#: driver (the application's socket, its link to the server, the three it passes on).
FDS_PER_CONNECTION = 5
#: Seconds an accept loop waits after accept() found no descriptor or memory (EMFILE,
#: ENFILE, ENOBUFS, ENOMEM) before it tries again; it keeps serving meanwhile.
ACCEPT_BACKOFF = 0.1

#: A log file (driver or server) is rotated at this size, keeping this many old files: a
#: long-lived mount's log stays under 4 MiB instead of growing for ever.
LOG_MAX_BYTES = 1024 * 1024
LOG_BACKUPS = 3

#: O_PATH descriptors the server keeps cached for the inodes the kernel knows (see
#: backend_server.inodes): at most this many, and at most 1/INODE_FD_SHARE of the soft
#: RLIMIT_NOFILE, so that open files, channels and sockets always keep the rest. An inode
#: outside the cache costs one open_by_handle_at and one fstat (~4 us) when it is next used.
INODE_FD_CACHE = 1024
INODE_FD_SHARE = 4

#: Directories a server watches with inotify for changes made behind its back (see
#: backend_server.watcher): each watch costs the kernel about 1 KiB and counts against the
#: user's fs.inotify.max_user_watches (which every process of the user shares). Past it the
#: server drops every watch, has the drivers forget everything, and starts over.
MAX_WATCHED_DIRS = 8192
