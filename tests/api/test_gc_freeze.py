"""Startup objects are frozen out of the cyclic collector once the app has started (api/app.py)."""

from __future__ import annotations

import gc


def test_the_started_app_has_frozen_what_it_built(client):
    assert gc.get_freeze_count() > 10_000  # FastAPI, pydantic and the routes at least
    assert client.get("/livez").status_code == 200
