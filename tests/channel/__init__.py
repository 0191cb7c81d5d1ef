"""Tests of channel/transport/: endpoints, handshakes, hostile clients, against real servers."""
