"""The contract's shapes (SPEC.md): what clients send and what the API hands out.

Internal records live in ``jobs/records.py``; the API turns them into these, never handing records out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceling", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
MetaValue = str | int | float | bool | None
# A model's request options (``GET /v1/models`` declares each model's): names to numbers, null where allowed.
OptionName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Options = dict[OptionName, int | float | None]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplerChoice(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    steps: int | None = Field(None, ge=1, le=1000)


class JobRequest(Strict):
    """The ``request`` part of ``POST /v1/jobs``. Fields a model does not take are refused per model."""

    model: Annotated[str, StringConstraints(min_length=3, max_length=128)]
    num_samples: int = Field(1, ge=1, le=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    tumor_class: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    modalities: list[Annotated[str, StringConstraints(min_length=1, max_length=16)]] | None = Field(None, max_length=8)
    sampler: SamplerChoice | None = None
    output_grid: Literal["input", "model"] = "input"
    options: Options | None = Field(
        None,
        max_length=16,
        description="the model's sampling options, as "
        "GET /v1/models declares them (name, type, default, bounds); refused per name",
    )
    truncation: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="deprecated: options.truncation (StyleGAN2 truncation ψ: 1 = none, 0 = the class's mean)",
    )
    intensity: Literal["zscore", "unit", "scanner"] | None = Field(
        None,
        description="the outputs' intensity scale: 'zscore' over the brain (background 0), 'unit' (brain "
        "0.5-99.5th percentiles to [0, 1]) or 'scanner' (non-negative int16, the checkpoint's typical brain mean and "
        "SD per contrast); default: the model's own. Every sidecar states it (IntensityScale)",
    )
    formats: list[Literal["nifti", "dicom"]] | None = Field(
        None,
        min_length=1,
        max_length=2,
        description="'nifti' (the default) and/or 'dicom': MR series + DICOM SEG "
        "of the mask, marked SYNTHETIC, zipped as one output 'dicom.zip'. The NIfTI files and sidecars are written "
        "either way (previews, manifests and a failed PACS delivery rely on them)",
    )
    send_to: Literal["pacs"] | None = Field(
        None,
        description="'pacs': after success the DICOM series is stored at "
        "the tenant's configured PACS; see the job's 'delivery'",
    )
    webhook: Annotated[str, StringConstraints(max_length=2048)] | None = None
    # Which events are POSTed to ``webhook``; default: the end of the job (succeeded, failed or canceled).
    webhook_events: list[Literal["job.started", "job.succeeded", "job.failed", "job.canceled"]] | None = Field(
        None, min_length=1, max_length=4
    )
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], MetaValue] | None = Field(None, max_length=32)

    @field_validator("modalities")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("list each modality once")
        if v is not None and not v:
            raise ValueError("ask for at least one modality, or leave the field out for all")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("list each format once")
        return v

    @field_validator("webhook")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().startswith(("http://", "https://")):
            raise ValueError("webhook must be an http(s) URL")
        return v


class Progress(BaseModel):
    completed_steps: int = 0
    total_steps: int = 0
    fraction: float = 0.0


class InputInfo(BaseModel):
    name: str
    sha256: str
    shape: list[int]
    spacing: list[float]
    size: int | None = None
    label_convention: str | None = None
    labels: list[int] | None = None


class OutputInfo(BaseModel):
    name: str
    modality: str
    sample_index: int | None
    kind: Literal["image", "sidecar", "mask", "preview", "dicom"] = "image"
    url: str | None = None
    expires_at: datetime | None = None
    size: int
    sha256: str
    shape: list[int] | None = None
    spacing: list[float] | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class Delivery(BaseModel):
    """Where a job's DICOM series went (``send_to: "pacs"``): pending until stored or out of attempts."""

    target: str
    destination: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    instances: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None


class Job(BaseModel):
    id: str
    model: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: Progress
    request: dict[str, Any]
    inputs: list[InputInfo]
    outputs: list[OutputInfo]
    error: ErrorBody | None = None
    attempts: int = 0
    metrics: dict[str, float] = {}
    batch_id: str | None = None
    delivery: Delivery | None = None


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


class SamplerInfo(BaseModel):
    name: str
    default_steps: int
    min_steps: int
    max_steps: int


class OptionInfo(BaseModel):
    name: str
    type: Literal["float", "int"]
    default: int | float | None
    min: int | float | None = None
    max: int | float | None = None
    nullable: bool = False
    description: str = ""


class IntensityInfo(BaseModel):
    """The intensity scales a model's jobs may ask for (``scanner`` needs statistics in the checkpoint)."""

    default: Literal["zscore", "unit", "scanner"]
    scales: list[Literal["zscore", "unit", "scanner"]]


class ModelInfo(BaseModel):
    id: str
    family: str
    version: str
    task: str
    classes: list[str]
    modalities: list[str]
    inputs: list[dict[str, Any]]
    output: dict[str, Any]
    samplers: list[SamplerInfo]
    default_sampler: str
    options: list[OptionInfo] = []
    intensity: IntensityInfo | None = None
    checkpoint: dict[str, Any]
    trained: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str | None = None
    errors: list[FieldProblem] | None = None


# ----- batches and the mask bank (routes/batches.py) ---------------------------------------------------------------
BatchStatus = Literal["planning", "running", "canceling", "canceled", "succeeded", "completed_with_errors", "failed"]


class RequestCounts(BaseModel):
    total: int
    succeeded: int
    failed: int
    canceled: int


class ManifestLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    csv: str
    json_: str = Field(alias="json")  # "json" would shadow BaseModel.json


class Batch(BaseModel):
    id: str
    model: str
    status: BatchStatus
    request: dict[str, Any]
    plan: dict[str, int]
    request_counts: RequestCounts
    created_at: str
    error: dict[str, Any] | None = None
    jobs: list[str]
    manifest: ManifestLinks | None = None


class BankMask(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    class_: str | None = Field(alias="class")
    size: int | None = None  # listings
    label_convention: str | None = None  # the upload's answer
    tumour_voxels: int | None = None


class BankMaskList(BaseModel):
    masks: list[BankMask]
