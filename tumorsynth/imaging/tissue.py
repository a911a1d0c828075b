"""The head's tissue in a z-scored multi-contrast volume with background 0: one definition for the evaluation
(``evaluation.anatomy``) and the output intensity scales (``imaging.intensity``), which must find the same brain.

Voxels where any contrast is off zero by more than ``TISSUE_Z``, closed, holes filled, largest connected component.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TISSUE_Z = 0.1


def tissue_region(image: np.ndarray) -> np.ndarray:
    """Boolean (X, Y, Z) region of tissue in a (C, X, Y, Z) z-scored volume with background 0."""
    raw = (np.abs(image) > TISSUE_Z).any(axis=0)
    closed = ndimage.binary_closing(raw, iterations=2)
    filled = ndimage.binary_fill_holes(closed)
    labels, n = ndimage.label(filled)
    if n == 0:
        return filled
    sizes = ndimage.sum_labels(filled, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))
