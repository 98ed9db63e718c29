"""Feature-map locations: where each output position of each level sits in the image."""

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def compute_locations_per_level(
    height: int, width: int, stride: int, offset: float = 0.5, device: torch.device = None
) -> Tensor:
    """
    Image coordinates of the locations of one feature map.

    Location (x, y) maps to (c + x * stride, c + y * stride), c = floor(stride * offset).

    Returns:
        Tensor of shape (height * width, 2) with (x, y) per row, in row-major
        (y outer, x inner) order, i.e. the order of ``feature.flatten(2)``.
    """
    shift = float(math.floor(stride * offset))
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride + shift
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride + shift
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


def compute_locations(
    shapes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    offset: float = 0.5,
    device: torch.device = None,
) -> List[Tensor]:
    """
    Locations of every level.

    Args:
        shapes: (H_i, W_i) of each level.
        strides: stride s_i of each level.
        offset: location offset in units of stride (0.5: paper, 0: torchvision).

    Returns:
        list of (H_i * W_i, 2) tensors of (x, y) image coordinates.
    """
    assert len(shapes) == len(strides), (shapes, strides)
    return [
        compute_locations_per_level(h, w, s, offset, device) for (h, w), s in zip(shapes, strides)
    ]
