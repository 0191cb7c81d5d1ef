"""Tests of the `ringfs` command line."""
