"""What a worker needs from a model family: load once, then ``generate`` with progress and cooperative cancel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..imaging.nifti import Volume
    from .registry import ModelEntry

# (completed_steps, total_steps). May raise errors.JobCanceled: generation stops at the step boundary.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationParams:
    num_samples: int
    seed: int
    sampler: str
    steps: int
    modalities: tuple[str, ...]
    tumor_class: str | None = None
    output_grid: str = "input"  # "input": the reference input's shape and affine; "model": the model grid
    options: dict = field(default_factory=dict)


@dataclass
class GeneratedVolume:
    modality: str
    sample_index: int
    data: np.ndarray  # float32, 2D or 3D
    affine: np.ndarray  # (4, 4)
    reference: Volume | None = None  # the input whose header codes the output keeps


class Generator(Protocol):
    entry: ModelEntry

    def total_steps(self, params: GenerationParams) -> int: ...

    def generate(
        self, params: GenerationParams, inputs: dict[str, Volume], progress: ProgressFn
    ) -> list[GeneratedVolume]: ...
