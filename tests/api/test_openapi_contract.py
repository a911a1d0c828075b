"""What generated clients rely on in /openapi.json: stable operation ids, the bearer scheme on every tenant route,
problem+json (the Problem schema) as every operation's error answer, and typed batch and mask-bank responses."""

from __future__ import annotations

import pytest

from tumorsynth.api.app import create_app
from tumorsynth.schemas import BankMask, Batch
from tumorsynth.settings import Settings

TENANT_FREE = {"livez", "readyz", "signed_object"}  # health probes; signed links carry their own signature


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0", storage_dir=root / "storage"))


@pytest.fixture(scope="module")
def spec(app):
    return app.openapi()


def operations(spec):
    return {op["operationId"]: (path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()}


# Generated clients name their methods after these: renaming one is a breaking change of the contract.
OPERATION_IDS = {
    "livez",
    "readyz",
    "list_models",
    "submit_job",
    "list_jobs",
    "get_job",
    "cancel_job",
    "preview",
    "events",
    "get_output",
    "submit_batch",
    "get_batch",
    "cancel_batch",
    "get_manifest",
    "signed_object",
    "queues",
    "deliveries",
    "list_masks",
    "add_mask",
    "delete_mask",
    "dataset_index",
    "dataset_file",
    "dataset_zip",
}


def test_operation_ids_are_stable_and_unique(spec):
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == OPERATION_IDS


def test_tenant_routes_declare_the_bearer_scheme(spec):
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for op_id, (_, _, op) in operations(spec).items():
        if op_id not in TENANT_FREE:
            assert op.get("security") == [{"apiKey": []}], op_id


def test_every_operation_answers_errors_as_problem_json(spec):
    problem = {"$ref": "#/components/schemas/Problem"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    fields = set(spec["components"]["schemas"]["Problem"]["properties"])
    assert {"type", "title", "status", "detail", "errors"} <= fields
    for op_id, (_, _, op) in operations(spec).items():
        for code in ("422", "4XX", "5XX"):
            assert op["responses"][code]["content"] == {"application/problem+json": {"schema": problem}}, (op_id, code)


@pytest.mark.parametrize(
    ("op_id", "status", "model"),
    [
        ("submit_batch", "202", "Batch"),
        ("get_batch", "200", "Batch"),
        ("cancel_batch", "202", "Batch"),
        ("add_mask", "201", "BankMask"),
        ("list_masks", "200", "BankMaskList"),
    ],
)
def test_batch_and_bank_routes_are_typed(spec, op_id, status, model):
    _, _, op = operations(spec)[op_id]
    assert op["responses"][status]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}


def test_the_batch_view_round_trips_through_its_schema():
    """The shape the service builds (jobs.batches.view) is what the schema serialises, aliases included."""
    raw = {
        "id": "batch_x",
        "model": "ldm/tiny@1",
        "status": "running",
        "request": {"seed": 1},
        "plan": {"LGG": 2},
        "request_counts": {"total": 2, "succeeded": 1, "failed": 0, "canceled": 0},
        "created_at": "2026-01-01T00:00:00Z",
        "error": None,
        "jobs": ["job_a", "job_b"],
        "manifest": {"csv": "/v1/batches/batch_x/manifest.csv", "json": "/v1/batches/batch_x/manifest.json"},
    }
    assert Batch.model_validate(raw).model_dump(mode="json", by_alias=True) == raw
    mask = {"id": "mask_x", "class": "LGG", "size": 10, "label_convention": None, "tumour_voxels": None}
    assert BankMask.model_validate(mask).model_dump(by_alias=True) == mask
