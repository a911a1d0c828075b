"""A job's planned memory: the output volumes it holds at once, bounded by ``max_job_output_bytes``.

A worker holds every output volume of a job before writing them (float32, in the reference input's geometry), so a
small upload declaring a large grid multiplies: a 0.5 MB mask of 512×512×256 voxels with 4 samples of 4
contrasts is 16 volumes of 256 MiB, and took the workers to 6 GB (issue 14, #6). The planned size is checked when
the job is submitted (a 422 naming ``num_samples``, nothing stored) and again by the worker before it samples (the
setting may have changed, or the record came from elsewhere).
"""

from __future__ import annotations

from math import prod

from ..errors import InvalidRequest

BYTES_PER_VOXEL = 4  # outputs are float32


class JobTooLarge(InvalidRequest):
    code = "job_too_large"
    title = "Job too large"


def output_shape(input_shapes: list[tuple[int, ...]], output_grid: str, model_shape: tuple[int, ...]) -> tuple:
    """The outputs' grid: the reference (first) input's, unless the request asks for the model grid or has none."""
    return tuple(input_shapes[0]) if input_shapes and output_grid != "model" else tuple(model_shape)


def planned_output_bytes(shape: tuple[int, ...], modalities: int, samples: int) -> int:
    """Every sample's images and the job's mask, each one float32 volume of ``shape``."""
    return prod(int(n) for n in shape) * BYTES_PER_VOXEL * (modalities * samples + 1)


def check_output_memory(shape: tuple[int, ...], modalities: int, samples: int, limit: int) -> None:
    need = planned_output_bytes(shape, modalities, samples)
    if need > limit:
        per_sample = planned_output_bytes(shape, modalities, 1) - planned_output_bytes(shape, 0, 1)
        fits = max(0, (limit - planned_output_bytes(shape, 0, 1)) // per_sample)
        raise JobTooLarge.for_field(
            "num_samples",
            f"{samples} samples of {modalities} contrasts on a {'×'.join(map(str, shape))} grid need "
            f"{need / 2**30:.2f} GiB of output volumes, over this service's {limit / 2**30:.2f} GiB per job; ask for "
            f"at most {fits} samples per job (or fewer contrasts, or a smaller volume)",
        )
