"""fcos_d2/modeling/locations.py: location coordinates computed by hand (paper: floor(s/2) +
x*s; torchvision: offset 0 and padded size // grid), and the numpy runtime's copy."""

import numpy as np
import pytest
import torch

from fcos_d2.deploy import compute_locations as numpy_locations
from fcos_d2.modeling.locations import compute_locations, compute_locations_per_level
from fcos_d2.postprocess import PostProcessing

STRIDES = (8, 16, 32, 64, 128)
# Feature maps of an 800x1344 padded batch (Detectron2's ResNet-FPN, P6/P7 by stride 2).
SHAPES_800x1344 = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]


def test_paper_locations_by_hand():
    got = compute_locations_per_level(2, 3, 8)
    assert got.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert compute_locations_per_level(1, 2, 128).tolist() == [[64, 64], [192, 64]]
    # torchvision's offset 0, and a stride per axis (s_y, s_x).
    assert compute_locations_per_level(2, 2, 16, offset=0.0).tolist() == [
        [0, 0],
        [16, 0],
        [0, 16],
        [16, 16],
    ]
    assert compute_locations_per_level(2, 1, (61, 64)).tolist() == [[32, 30], [32, 91]]


def test_padded_size_div_grid_differs_only_where_the_size_is_not_a_multiple():
    level = compute_locations(SHAPES_800x1344, STRIDES, 0.0)
    grid = compute_locations(
        SHAPES_800x1344, STRIDES, 0.0, mode="padded_size_div_grid", padded_size=(800, 1344)
    )
    for i in range(3):  # P3-P5: 800 and 1344 are multiples of 8, 16, 32
        assert torch.equal(level[i], grid[i])
    # P6: 800 // 13 = 61 rows apart, 1344 // 21 = 64 columns apart.
    assert grid[3][21].tolist() == [0, 61] and grid[3][1].tolist() == [64, 0]
    assert level[3][21].tolist() == [0, 64]
    with pytest.raises(ValueError, match="needs the padded image size"):
        compute_locations(SHAPES_800x1344, STRIDES, mode="padded_size_div_grid")


@pytest.mark.parametrize("mode", ["level", "padded_size_div_grid"])
@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_numpy_runtime_places_them_identically(mode, offset):
    want = compute_locations(SHAPES_800x1344, STRIDES, offset, mode=mode, padded_size=(800, 1344))
    p = PostProcessing(strides=STRIDES, location_offset=offset, location_stride=mode)
    got = numpy_locations(SHAPES_800x1344, p)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w.numpy())
