"""The VQGAN's ROI grid: centred where asked, and refused with a clear message when a shape is not 3D."""

from __future__ import annotations

import numpy as np
import pytest

from tumorsynth.data.roi import roi_mapping

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def test_the_roi_grid_is_centred_on_the_centre_voxel():
    centre = np.array([20.0, 24.0, 18.0])
    mapping = roi_mapping((40, 48, 36), AFFINE, centre, (8, 8, 8), (4.0, 4.0, 4.0))
    assert mapping.in_shape == (40, 48, 36) and mapping.grid_shape == (8, 8, 8)
    np.testing.assert_allclose(mapping.step, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(mapping.step * 3.5 + mapping.offset, centre)  # the grid's middle is the centre
    np.testing.assert_allclose(mapping.grid_affine @ [3.5, 3.5, 3.5, 1], AFFINE @ [*centre, 1])


@pytest.mark.parametrize(
    ("in_shape", "grid", "name"), [((40, 48, 36), (8, 8), "grid"), ((40, 48), (8, 8, 8), "in_shape")]
)
def test_a_shape_without_three_axes_is_refused_by_name(in_shape, grid, name):
    with pytest.raises(ValueError, match=rf"^{name} must hold 3 voxel counts"):
        roi_mapping(in_shape, AFFINE, np.zeros(3), grid, (4.0, 4.0, 4.0))
