"""A montage of a job's outputs: one row per volume, axial / coronal / sagittal through the tumour, mask outlined."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

TILE = 160


def _window(x: np.ndarray) -> np.ndarray:
    finite = x[np.isfinite(x)]
    nz = finite[finite != 0]
    lo, hi = np.percentile(nz if nz.size else finite, (1, 99)) if finite.size else (0.0, 1.0)
    return np.clip((x - lo) / (hi - lo or 1.0), 0, 1)


def _views(vol: np.ndarray, centre: tuple[int, ...]) -> list[np.ndarray]:
    x, y, z = centre
    return [vol[:, :, z], vol[:, y, :], vol[x, :, :]]  # axial, coronal, sagittal (in voxel axes)


def _tile(img: np.ndarray, outline: np.ndarray | None, spacing: tuple[float, float]) -> Image.Image:
    rgb = np.repeat((_window(img) * 255).astype(np.uint8)[..., None], 3, axis=2)
    if outline is not None:
        rgb[outline] = (255, 40, 40)
    pic = Image.fromarray(np.rot90(rgb))  # first voxel axis left-right, second bottom-up
    w, h = pic.size
    aspect = spacing[1] / spacing[0] if spacing[0] else 1.0
    scale = TILE / max(w, h * aspect)
    return pic.resize((max(1, int(w * scale)), max(1, int(h * aspect * scale))), Image.Resampling.NEAREST)


def slice_png(data: np.ndarray) -> bytes:
    """An 8-bit PNG of one slice, (X, Y) or (X, Y, 1) in voxel order, shown as the montage shows an axial view.

    Values already in [0, 1] are written as they are (×255); others are windowed to their 1-99th percentiles.
    """
    x = np.asarray(data, dtype=np.float32)
    x = x.reshape(x.shape[:2]) if x.ndim == 3 and x.shape[2] == 1 else x
    if x.ndim != 2:
        raise ValueError(f"slice_png takes one 2D slice, got shape {data.shape}")
    unit = x if x.size and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else _window(x)
    buf = io.BytesIO()
    Image.fromarray(np.rot90((unit * 255).round().astype(np.uint8))).save(buf, format="PNG")
    return buf.getvalue()


def montage(volumes: list[tuple[str, np.ndarray, tuple[float, ...]]], mask: np.ndarray | None) -> bytes:
    """PNG bytes. ``volumes``: (label, 3D array, spacing); ``mask`` on the same grid (or None)."""
    shape = volumes[0][1].shape
    if mask is not None and mask.shape == shape and (mask > 0).any():
        centre = tuple(int(round(c)) for c in ndimage.center_of_mass(mask > 0))
        edge = (mask > 0) & ~ndimage.binary_erosion(mask > 0)
    else:
        centre, edge = tuple(n // 2 for n in shape), None
    rows = []
    for _, vol, sp in volumes:
        outlines = _views(edge, centre) if edge is not None else [None] * 3
        spacings = [(sp[0], sp[1]), (sp[0], sp[2]), (sp[1], sp[2])]
        views = _views(vol, centre)[: 1 if vol.shape[2] == 1 else 3]  # a single slice has only its axial view
        rows.append([_tile(v, o, s) for v, o, s in zip(views, outlines, spacings)])
    width = sum(t.size[0] for t in rows[0]) + 4 * len(rows[0])
    height = sum(max(t.size[1] for t in r) + 4 for r in rows)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    yoff = 0
    for r in rows:
        xoff = 0
        for t in r:
            canvas.paste(t, (xoff, yoff))
            xoff += t.size[0] + 4
        yoff += max(t.size[1] for t in r) + 4
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
