"""Dependencies as ``Annotated`` aliases; tests swap them through ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import NotFound, Unauthorized
from ..jobs.batches import BatchService
from ..jobs.maskbank import MaskBank
from ..jobs.records import is_id
from ..jobs.service import JobService
from ..jobs.store import JobStore
from ..models.registry import ModelRegistry
from ..settings import Settings, is_loopback
from ..storage.base import ObjectStore
from .services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings_dep(s: ServicesDep) -> Settings:
    return s.settings


def get_jobs(s: ServicesDep) -> JobStore:
    return s.jobs


def get_store(s: ServicesDep) -> ObjectStore:
    return s.store


def get_registry(s: ServicesDep) -> ModelRegistry:
    return s.registry


def get_submissions(s: ServicesDep) -> JobService:
    return s.submissions


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SubmissionsDep = Annotated[JobService, Depends(get_submissions)]


def get_batches(s: ServicesDep) -> BatchService:
    return s.batches


BatchesDep = Annotated[BatchService, Depends(get_batches)]


def get_bank(s: ServicesDep) -> MaskBank:
    return s.bank


BankDep = Annotated[MaskBank, Depends(get_bank)]


# Declares the scheme in the OpenAPI (generated clients send the key); the header is read below, where a missing or
# unknown key is this API's 401 problem rather than FastAPI's 403.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key issued to your tenant (TUMORSYNTH_API_KEYS), as 'Bearer <key>'",
)


def get_tenant(
    request: Request,
    settings: SettingsDep,
    declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> str:
    """Bearer key → tenant. With no keys configured, only loopback clients are served, as tenant 'local'."""
    if not settings.auth_enabled:
        client = request.client.host if request.client else "127.0.0.1"
        if not (is_loopback(client) or client == "testclient"):
            raise Unauthorized("this service has no API keys configured and serves loopback clients only")
        return "local"
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    tenant = settings.tenant_for_key(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if tenant is None:
        raise Unauthorized("send 'Authorization: Bearer <api key>' with a key issued to your tenant")
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def job_id_path(job_id: str, _: TenantDep) -> str:
    """A path id not shaped as a job id is a missing job, before it can reach a Redis key (after auth: a 401 stays
    a 401)."""
    if not is_id("job", job_id):
        raise NotFound("no such job; job ids look like job_ followed by 32 hex digits")
    return job_id


def batch_id_path(batch_id: str, _: TenantDep) -> str:
    if not is_id("batch", batch_id):
        raise NotFound("no such batch; batch ids look like batch_ followed by 32 hex digits")
    return batch_id


def mask_id_path(mask_id: str, _: TenantDep) -> str:
    if not is_id("mask", mask_id):
        raise NotFound("no such bank mask; mask ids look like mask_ followed by 32 hex digits")
    return mask_id


JobIdDep = Annotated[str, Depends(job_id_path)]
MaskIdDep = Annotated[str, Depends(mask_id_path)]
BatchIdDep = Annotated[str, Depends(batch_id_path)]
