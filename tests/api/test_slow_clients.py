"""Slow clients cannot hold sockets for ever: a real API process with a 2 s header deadline and a 2 s body idle
timeout. Connections that never finish their headers (silent, or trickling a byte at a time) and uploads that never
send their declared body are closed; other clients are served meanwhile.

The attack: 800 connections with unfinished headers and 300 uploads that never sent their body all stayed open.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tumorsynth.embedded.redis_server import free_port

from .bad_requests import BOUNDARY

HEADERS_WITHIN = 2.0
BODY_IDLE = 2.0
SLACK = 3.0


@pytest.fixture(scope="module")
def api(redis_server, s3_endpoint, model_dir, tmp_path_factory):
    s = make_settings(
        redis_server, s3_endpoint, model_dir, header_timeout_seconds=HEADERS_WITHIN, body_idle_timeout_seconds=BODY_IDLE
    )
    proc = ApiProcess(settings_env(s), free_port(), tmp_path_factory.mktemp("slow") / "api.log").start()
    yield proc
    proc.stop()


def closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it was still open after ``seconds``."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def connect(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        s.sendall(data)
    return s


def test_unfinished_headers_are_closed_at_the_header_deadline(api):
    silent = [connect(api.port, b"") for _ in range(20)]
    partial = [connect(api.port, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n") for _ in range(30)]
    assert httpx.get(f"{api.base_url}/livez", timeout=5).status_code == 200  # others are served meanwhile
    started = time.monotonic()
    outcomes = [closed_within(s, HEADERS_WITHIN + SLACK - (time.monotonic() - started)) for s in silent + partial]
    for s in silent + partial:
        s.close()
    assert all(o is not None for o in outcomes), f"{sum(o is None for o in outcomes)} of 50 still open"


def test_a_trickle_of_header_bytes_does_not_extend_the_deadline(api):
    s = connect(api.port, b"G")
    started = time.monotonic()
    try:
        for byte in b"ET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            if time.monotonic() - started > HEADERS_WITHIN + SLACK:
                break
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.25)
        assert closed_within(s, 1.0) is not None, "a trickling client kept its connection past the deadline"
        assert time.monotonic() - started < HEADERS_WITHIN + SLACK
    finally:
        s.close()


def test_uploads_that_stop_sending_their_body_get_408_and_are_closed(api):
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {ALPHA['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 1000000\r\n\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mask"; filename="m.nii.gz"\r\n\r\n'
    ).encode()
    stalled = [connect(api.port, head + b"\x1f" * 1000) for _ in range(20)]
    assert httpx.get(f"{api.base_url}/livez", timeout=5).status_code == 200
    outcomes = [closed_within(s, BODY_IDLE + SLACK) for s in stalled]
    for s in stalled:
        s.close()
    assert all(o is not None for o in outcomes), f"{sum(o is None for o in outcomes)} of 20 still open"
    assert all(o.startswith(b"HTTP/1.1 408") and b"application/problem+json" in o for o in outcomes), outcomes[0]
