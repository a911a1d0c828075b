"""The Python client: the ``tumorsynth-client`` distribution (``clients/python``, httpx only), re-exported here so
``from tumorsynth.client import Client`` keeps working for the CLI, the demo and existing scripts."""

from __future__ import annotations

from tumorsynth_client import TERMINAL, ApiError, Client

__all__ = ["TERMINAL", "ApiError", "Client"]
