"""schemathesis over ``/openapi.json``: generated requests to every documented operation, as tenant alpha.

Checks: never a 5xx, and every 4xx is ``application/problem+json`` whose ``status`` matches. The app runs on the
real Redis (a database of its own) and S3 endpoint; its queue is consumed by no worker, so nothing generated runs.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import ALPHA, make_settings

EXAMPLES = int(os.environ.get("TUMORSYNTH_FUZZ_EXAMPLES", "15"))  # per operation and generation mode
PARKED = {"ldm": "parked", "vqgan": "parked", "tavit": "parked", "stylegan2": "parked"}


@pytest.fixture(scope="module")
def fuzzed_app(redis_server, s3_endpoint, model_dir):
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/10",
        family_queues=PARKED,
        max_request_bytes=8 * 1024**2,
        max_file_bytes=4 * 1024**2,
    )
    make_store(s).ensure_bucket()
    app = create_app(s)
    app.state.services.redis.flushdb()
    return app


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


def no_server_error(ctx, response, case) -> None:
    """schemathesis's not_a_server_error, except /readyz's 503, which is its answer while no worker is up."""
    if case.path == "/readyz" and response.status_code == 503:
        assert response.json()["checks"]["workers"] == "no worker has reported in"
        return
    not_a_server_error(ctx, response, case)


def problem_json_for_client_errors(ctx, response, case) -> None:
    if 400 <= response.status_code < 500:
        ctype = response.headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype == "application/problem+json", f"{response.status_code} with {ctype}: {response.text[:200]}"
        assert response.json()["status"] == response.status_code


# schemathesis's pytest loader (from_fixture) reads a node attribute pytest 9 removed, so the test drives each
# operation's hypothesis strategy itself: the same generated cases, the same checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_server_errors_and_problem_json_for_client_errors(api_schema, mode):
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert {"/v1/jobs", "/v1/batches", "/v1/masks"} <= {op.path for op in operations}
    statuses: dict[str, set[int]] = {}
    for op in operations:
        if op.path.endswith("/events"):
            continue  # a stream; schemathesis cannot know an existing id, and for others it is a plain 404

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            response = case.call_and_validate(headers=ALPHA, checks=[no_server_error, problem_json_for_client_errors])
            statuses.setdefault(op.label, set()).add(response.status_code)

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing in this operation to get wrong
    # Negative cases exist only where the schema constrains something (bodies, typed query parameters).
    reached = {"POST /v1/jobs", "POST /v1/batches", "POST /v1/masks", "GET /v1/jobs"}
    if mode == GenerationMode.POSITIVE:
        reached |= {"GET /v1/models", "GET /v1/jobs/{job_id}", "GET /v1/batches/{batch_id}", "GET /livez"}
    assert reached <= set(statuses), statuses
    assert all(400 <= code < 500 for label in ("POST /v1/batches", "POST /v1/masks") for code in statuses[label])
