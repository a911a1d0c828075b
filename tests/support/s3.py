"""A real S3 endpoint for the tests: moto in server mode, on its own thread and a free loopback port."""

from __future__ import annotations

import socket

from moto.server import ThreadedMotoServer

# Any non-empty credentials work against moto; these are what the tests pass to S3Store.
ACCESS_KEY = "test"
SECRET_KEY = "test-secret"


def start_moto_server() -> tuple[ThreadedMotoServer, str]:
    """Start moto on 127.0.0.1 with an OS-assigned port; returns the server (call ``stop()``) and its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
