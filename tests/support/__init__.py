"""Helpers the tests and the benchmarks share: mounts, server processes, echo servers, fuzzers."""
