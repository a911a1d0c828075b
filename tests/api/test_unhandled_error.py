"""A bug's 500 is one logged traceback and a clean problem+json answer: the connection stays usable.

Starlette's error middleware re-raises after answering, and uvicorn then logs a second traceback and closes the
socket, so the client's next request on that keep-alive connection was reset. Served here by a real uvicorn on a
socket, with one route added that fails as a bug would.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.security.conftest import LogCapture
from tests.support.services import uvicorn_in_thread


@pytest.fixture()
def served(settings):
    from tumorsynth.api.app import create_app

    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    with uvicorn_in_thread(app, log_level="info") as url:
        yield url


def test_a_500_keeps_the_connection_and_logs_one_traceback(served):
    with LogCapture() as logs, httpx.Client(base_url=served, timeout=10) as client:
        r = client.get("/boom")
        assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "internal_error" and "a bug" not in r.text
        assert client.get("/livez").status_code == 200  # same connection: it was reset before
        time.sleep(0.2)
    errors = [line for line in logs.lines if " ERROR " in line]
    assert len(errors) == 1 and "RuntimeError: a bug" in errors[0] and "/boom" in errors[0], errors
    assert logging.getLogger("uvicorn.error").level <= logging.INFO
