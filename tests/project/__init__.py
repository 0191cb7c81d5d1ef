"""Checks of the repository itself: import rules, documentation, the suite's FUSE check."""
