from __future__ import annotations

from fastapi import APIRouter

from ...schemas import ModelList
from ..deps import RegistryDep, TenantDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(_: TenantDep, registry: RegistryDep) -> ModelList:
    return ModelList(models=[e.info() for e in registry.list()])
