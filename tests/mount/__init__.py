"""Tests through a real FUSE mount: POSIX behaviour, options, limits, recovery, direct channels."""
