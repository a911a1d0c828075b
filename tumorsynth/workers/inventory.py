"""What a worker has, announced with its heartbeat: GPUs, installed models, versions; and the queues it takes.

Jobs are routed per family (``TUMORSYNTH_FAMILY_QUEUES``: family → queue; the dispatcher sends each job to its
family's queue). ``tumorsynth worker --queues auto`` consumes exactly the queues of the families it has a checkpoint
for, so on many machines a worker never takes a job for a model it does not hold.

This runs in the worker's main process, which must never initialise CUDA (prefork children inherit it): GPUs are
read with ``nvidia-smi`` (the driver's own tool, present wherever an NVIDIA GPU is usable; NVML does not create a
CUDA context either, but its Python binding is not a dependency), and versions from package metadata, not imports.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata

from ..models.families import family_names
from ..models.registry import ModelRegistry
from ..settings import Settings

log = logging.getLogger(__name__)
PACKAGES = ("tumorsynth", "torch", "celery", "redis")


def gpus() -> list[dict]:
    """``[{index, name, memory_total_mib}]`` of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``); [] on CPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        log.warning("nvidia-smi did not answer; announcing no GPU", exc_info=True)
        return []
    found = []
    for line in filter(None, (raw.strip() for raw in out.splitlines())):
        index, name, memory = (p.strip() for p in line.split(",", 2))
        found.append({"index": int(index), "name": name, "memory_total_mib": int(float(memory))})
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        wanted = [int(v) for v in visible.split(",") if v.strip()]
        found = [g for g in found if g["index"] in wanted]
    return found


def models(registry: ModelRegistry) -> list[dict]:
    return [{"id": e.id, "sha256": e.weights_sha256} for e in registry.list()]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def queues_for_models(settings: Settings, registry: ModelRegistry) -> list[str]:
    """The queues of the families with at least one installed checkpoint."""
    return sorted({settings.queue_for(e.family) for e in registry.list()})


def resolve_queues(spec: str, settings: Settings, registry: ModelRegistry) -> list[str]:
    """``auto``: the queues of the installed families. A list is taken as named (the single-machine default, one
    ``gpu`` queue for every family, stays as it was), with a warning for each family it carries without a model."""
    installed = {e.family for e in registry.list()}
    if spec.strip() == "auto":
        if not installed:
            raise ValueError(
                f"no checkpoint under {settings.model_dir}: install one (tumorsynth models) or name the "
                "queues with --queues"
            )
        return queues_for_models(settings, registry)
    named = [q.strip() for q in spec.split(",") if q.strip()]
    for family in family_names():
        queue = settings.queue_for(family)
        if queue in named and family not in installed:
            log.warning(
                "queue %s carries %s jobs but this worker has no %s checkpoint: they fail here; give each "
                "family its own queue (TUMORSYNTH_FAMILY_QUEUES) and start workers with --queues auto",
                queue,
                family,
                family,
            )
    return named
