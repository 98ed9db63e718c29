"""Feature-map locations: where each output position of each level sits in the image."""

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..config import check_choice
from ..postprocess import LOCATION_STRIDES

__all__ = ["LOCATION_STRIDES", "compute_locations", "compute_locations_per_level"]


def compute_locations_per_level(
    height: int,
    width: int,
    stride: Union[int, Tuple[int, int]],
    offset: float = 0.5,
    device: Optional[torch.device] = None,
) -> Tensor:
    """
    Image coordinates of the locations of one feature map.

    Location (x, y) maps to (c_x + x * s_x, c_y + y * s_y), c = floor(s * offset), with
    ``stride`` = s for both axes or (s_y, s_x).

    Returns:
        Tensor of shape (height * width, 2) with (x, y) per row, in row-major
        (y outer, x inner) order, i.e. the order of ``feature.flatten(2)``.
    """
    stride_y, stride_x = (stride, stride) if isinstance(stride, int) else stride
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride_x
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride_y
    # math.floor, no float(): strides may be SymInts while exporting.
    xs = xs + math.floor(stride_x * offset)
    ys = ys + math.floor(stride_y * offset)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


def compute_locations(
    shapes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    offset: float = 0.5,
    device: Optional[torch.device] = None,
    *,
    mode: str = "level",
    padded_size: Optional[Tuple[int, int]] = None,
) -> List[Tensor]:
    """
    Locations of every level.

    Args:
        shapes: (H_i, W_i) of each level.
        strides: stride s_i of each level.
        offset: location offset in units of stride (0.5: paper, 0: torchvision).
        mode: "level": locations s_i apart (paper); "padded_size_div_grid": (P_h // H_i,
            P_w // W_i) apart, with (P_h, P_w) = ``padded_size`` the batch's padded image
            size (torchvision; equal to "level" when P_h, P_w are multiples of s_i).

    Returns:
        list of (H_i * W_i, 2) tensors of (x, y) image coordinates.
    """
    assert len(shapes) == len(strides), (shapes, strides)
    if mode == "level":
        level_strides = list(strides)
    elif mode == "padded_size_div_grid":
        if padded_size is None:
            raise ValueError("LOCATION_STRIDE 'padded_size_div_grid' needs the padded image size")
        ph, pw = padded_size  # ints (or SymInts when exporting: no int() here)
        level_strides = [(ph // h, pw // w) for h, w in shapes]
    else:
        check_choice("LOCATION_STRIDE", mode, LOCATION_STRIDES)
    return [
        compute_locations_per_level(h, w, s, offset, device)
        for (h, w), s in zip(shapes, level_strides)
    ]
