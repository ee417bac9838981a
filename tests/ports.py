"""A free TCP port for tests that start several processes (gloo, torchrun)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (a fixed one collides with other runs on the same host)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
