"""Montages to look at: an LDM's samples beside the real subjects whose masks they were given.

One PNG (``imaging.preview.montage``: axial / coronal / sagittal through the tumour, mask outlined in red) per
subject: a row per contrast of the real subject, then the same contrasts of a sample from its mask and class. All
on the model grid, each tile windowed to its own 1st–99th percentile of non-zero voxels, so a texture-filled field of
view, a missing outline or a flat tumour show at a glance.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..imaging.geometry import centred_affine
from ..imaging.preview import montage
from ..models.base import GenerationParams
from ..models.ldm.runner import LDMGenerator
from ..models.registry import ModelEntry


def ldm_montage(entry: ModelEntry, data_dir, out: Path, subjects: int = 2, seed: int = 0, device: str = "cpu") -> Path:
    from ..data.brats import find_subjects
    from ..data.subjects import prepare_subject
    from .ldm_eval import GridMask

    gen = LDMGenerator(entry, device)
    grid, fov, spacing = tuple(entry.output_shape), tuple(entry.config["fov_mm"]), tuple(entry.output_spacing)
    mods = list(entry.modalities)
    affine = centred_affine(entry.output_shape, entry.output_spacing)
    pictures = []
    for i, s in enumerate(find_subjects(data_dir)[-subjects:]):
        image, labels = prepare_subject(s, grid, fov, tuple(mods))
        params = GenerationParams(
            num_samples=1,
            seed=seed + i,
            sampler=entry.default_sampler,
            steps=entry.sampler(None).default_steps,
            modalities=tuple(mods),
            output_grid="model",
            tumor_class=s.tumor_class if s.tumor_class in entry.classes else None,
        )
        outs = gen.generate(params, {"mask": GridMask(labels, affine)}, lambda done, total: None)
        rows = [(f"real {m}", image[c], spacing) for c, m in enumerate(mods)]
        rows += [(f"generated {o.modality}", o.data, spacing) for o in outs]
        pictures.append(Image.open(io.BytesIO(montage(rows, labels))))
    width = sum(p.size[0] for p in pictures) + 8 * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, max(p.size[1] for p in pictures)), (40, 40, 40))
    x = 0
    for p in pictures:
        canvas.paste(p, (x, 0))
        x += p.size[0] + 8
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
