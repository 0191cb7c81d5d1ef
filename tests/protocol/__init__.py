"""Tests of the sans-I/O protocol layer (channel/protocol/): bytes and state only, no FUSE."""
