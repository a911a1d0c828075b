"""One hierarchy of typed errors.

The API maps them to RFC 9457 problem+json (``status``, ``code``, ``errors``); workers map them to a failed
job's ``error`` (``code``, ``message``). ``transient`` errors are retried by workers, the rest fail at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request: ``field`` names it as the client sent it."""

    field: str
    message: str


class TumorsynthError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"
    transient: bool = False

    def __init__(self, message: str, *, errors: list[FieldError] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.errors: list[FieldError] = list(errors or [])
        if code is not None:
            self.code = code


class InvalidRequest(TumorsynthError):
    """The request cannot be accepted as sent; ``errors`` says which fields and what to change."""

    status = 422
    code = "invalid_request"
    title = "Invalid request"

    @classmethod
    def for_field(cls, field_name: str, message: str, **kw) -> Self:
        return cls(f"{field_name}: {message}", errors=[FieldError(field_name, message)], **kw)


class InvalidUpload(InvalidRequest):
    """An uploaded file is not a volume we can safely read; the message says what to change."""

    code = "invalid_upload"
    title = "Invalid upload"


class MalformedRequest(InvalidRequest):
    """The request's framing (multipart boundaries, part headers) cannot be parsed."""

    status = 400
    code = "malformed_request"
    title = "Malformed request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class Unauthorized(TumorsynthError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class NotFound(TumorsynthError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(TumorsynthError):
    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyInProgress(Conflict):
    """Another request with the same Idempotency-Key is still being submitted; retry after ``retry_after``."""

    code = "idempotency_in_progress"
    retry_after = 1


class TooManyEventStreams(TumorsynthError):
    """A tenant already holds as many open event streams as allowed."""

    status = 429
    code = "too_many_event_streams"
    title = "Too many event streams"
    retry_after = 5


class ModelNotFound(InvalidRequest):
    code = "unknown_model"


class CheckpointError(TumorsynthError):
    """A checkpoint is missing, corrupt, or does not match its recorded sha256."""

    code = "checkpoint_invalid"
    title = "Checkpoint invalid"


class JobCanceled(TumorsynthError):
    """Raised inside sampling when the job was canceled; not a failure."""

    code = "canceled"
    title = "Canceled"


class LeaseLost(TumorsynthError):
    """This worker no longer owns the job (its lease lapsed and another attempt took over)."""

    code = "lease_lost"
    title = "Lease lost"


class StorageUnavailable(TumorsynthError):
    status = 503
    code = "storage_unavailable"
    title = "Object storage unavailable"
    transient = True


class ServiceUnavailable(TumorsynthError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"
    transient = True


@dataclass
class ErrorInfo:
    """What a failed job carries: a stable ``code`` and a message a person can act on."""

    code: str
    message: str
    details: dict = field(default_factory=dict)


class JobStoreUnavailable(ServiceUnavailable):
    """Redis (the job store and broker) did not answer in time or refused the connection."""

    code = "job_store_unavailable"
    title = "Job store unavailable"
