"""Tests of the file-system server (backend_server/) over real channels, without a mount."""
