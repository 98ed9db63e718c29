"""
FCOS target assignment: which ground-truth box (if any) each location regresses.

A location is positive for a box if it lies strictly inside the box (or, with center
sampling, strictly inside a square of half-side ``r * stride`` around the box center,
clipped to the box), and the box's max(l, t, r, b) from that location lies in the
location's level range [lo, hi] (paper, sec. 3.2: both bounds included; the "open"
rule excludes both). Where several boxes qualify, the one of minimal area wins; among
boxes of equal area, the first (lowest index in the image's annotations) wins, as
``torch.min`` picks it in every source implementation.
"""

import math
from typing import List, NamedTuple, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry
from torch import Tensor

from ..config import check_choice

__all__ = [
    "FCOS_ASSIGNER_REGISTRY",
    "FCOSAssigner",
    "FCOSTargets",
    "build_fcos_assigner",
    "compute_centerness_targets",
    "SIZE_RANGE_BOUNDS",
    "MATCH_AREAS",
    "box_match_areas",
    "level_size_ranges",
    "ltrb_distances",
    "match_locations_to_boxes",
]

FCOS_ASSIGNER_REGISTRY = Registry("FCOS_ASSIGNER")
FCOS_ASSIGNER_REGISTRY.__doc__ = """
Registry for FCOS target assigners. The registered object is called with
``cfg`` through ``@configurable`` and must behave like :class:`FCOSAssigner`.
"""


#: How max(l, t, r, b) is compared with a level's range [lo, hi] (MODEL.FCOS.SIZE_RANGE_BOUNDS).
SIZE_RANGE_BOUNDS = ("closed", "open")
#: How box areas are computed for the minimal-area rule (MODEL.FCOS.MATCH_AREA).
MATCH_AREAS = ("wh", "wh_plus_one", "torchvision")


class FCOSTargets(NamedTuple):
    """Per-location training targets of a batch (L = locations of all levels)."""

    labels: Tensor  # (N, L) int64 class index; background = num_classes
    reg_targets: Tensor  # (N, L, 4) float (l, t, r, b) in pixels; 0 on background
    matched_idxs: Tensor  # (N, L) int64 index of the matched box in its image; -1 background


def level_size_ranges(
    sizes_of_interest: Sequence[float], num_levels: int
) -> List[Tuple[float, float]]:
    """
    The (lo, hi) bounds of max(l, t, r, b) of each level (compared as SIZE_RANGE_BOUNDS says).

    ``sizes_of_interest`` = (m_1, ..., m_{n-1}) gives [(0, m_1), (m_1, m_2), ..., (m_{n-1}, inf)].
    """
    if len(sizes_of_interest) != num_levels - 1:
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST needs {num_levels - 1} values for {num_levels} "
            f"levels, got {list(sizes_of_interest)}"
        )
    bounds = [0.0, *[float(m) for m in sizes_of_interest], math.inf]
    if any(a >= b for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST must increase, got {list(sizes_of_interest)}"
        )
    return list(zip(bounds[:-1], bounds[1:]))


def ltrb_distances(locations: Tensor, boxes: Tensor) -> Tensor:
    """
    Distances from points to box sides, element-wise.

    Args:
        locations: (..., 2) (x, y); boxes: (..., 4) (x0, y0, x1, y1), broadcastable.

    Returns:
        (..., 4) (l, t, r, b) = (x - x0, y - y0, x1 - x, y1 - y).
    """
    x, y = locations[..., 0], locations[..., 1]
    return torch.stack(
        (x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1
    )


def compute_centerness_targets(reg_targets: Tensor) -> Tensor:
    """
    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (..., 4) ltrb targets -> (...).
    """
    lr = reg_targets[..., [0, 2]]
    tb = reg_targets[..., [1, 3]]
    ratio = (lr.min(dim=-1).values / lr.max(dim=-1).values) * (
        tb.min(dim=-1).values / tb.max(dim=-1).values
    )
    return torch.sqrt(ratio)


def box_match_areas(boxes: Tensor, rule: str = "wh") -> Tensor:
    """
    (M, 4) boxes -> (M,) the areas that the minimal-area rule compares.

    "wh": (x1 - x0) * (y1 - y0) (paper, AdelaiDet). "wh_plus_one": (x1 - x0 + 1) *
    (y1 - y0 + 1), maskrcnn-benchmark's ``BoxList.area()`` used by the original FCOS.
    "torchvision": -(1e8 - w * h) rounded to float32, as torchvision's FCOS ranks boxes by
    float32 ``1e8 - area``: areas within float32's spacing near 1e8 (8 px^2) tie, and the
    first box then wins.
    """
    check_choice("MATCH_AREA", rule, MATCH_AREAS)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    if rule == "wh_plus_one":
        return (w + 1) * (h + 1)
    area = w * h
    if rule == "torchvision":
        return -(1e8 - area.float()).to(area.dtype)
    return area


def _match_chunk(
    locations: Tensor,
    size_lo: Tensor,
    size_hi: Tensor,
    radii: Tensor,
    boxes: Tensor,
    areas: Tensor,
    centers: Tensor,
    center_sampling: bool,
    closed: bool,
) -> Tensor:
    x = locations[:, 0:1]  # (Lc, 1)
    y = locations[:, 1:2]
    left = x - boxes[:, 0]  # (Lc, M)
    top = y - boxes[:, 1]
    right = boxes[:, 2] - x
    bottom = boxes[:, 3] - y
    min_dist = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom))
    max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
    if closed:
        in_range = (max_dist >= size_lo[:, None]) & (max_dist <= size_hi[:, None])
    else:
        in_range = (max_dist > size_lo[:, None]) & (max_dist < size_hi[:, None])
    ok = (min_dist > 0) & in_range
    if center_sampling:
        r = radii[:, None]
        ok &= ((x - centers[:, 0]).abs() < r) & ((y - centers[:, 1]).abs() < r)
    cost = torch.where(ok, areas[None, :], torch.full_like(left, math.inf))
    best, idx = cost.min(dim=1)
    return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


def match_locations_to_boxes(
    locations: Tensor,
    size_lo: Tensor,
    size_hi: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    center_sampling_radius: float = 0.0,
    max_pairs: int = 4_000_000,
    size_range_bounds: str = "closed",
    match_area: str = "wh",
) -> Tensor:
    """
    Match every location to at most one box.

    Args:
        locations: (L, 2) image (x, y) of all locations of all levels.
        size_lo, size_hi: (L,) the range of max(l, t, r, b) of each location's level.
        strides: (L,) stride of each location's level (used by center sampling).
        gt_boxes: (M, 4) boxes (x0, y0, x1, y1); M may be 0.
        center_sampling_radius: r > 0 enables center sampling with radius r * stride.
        max_pairs: at most this many location x box pairs are evaluated at once.
        size_range_bounds: "closed" (lo <= max <= hi, paper) or "open" (lo < max < hi).
        match_area: areas compared by the minimal-area rule, see :func:`box_match_areas`.

    Returns:
        (L,) int64: index into gt_boxes of the matched box, -1 for background.
    """
    check_choice("SIZE_RANGE_BOUNDS", size_range_bounds, SIZE_RANGE_BOUNDS)
    closed = size_range_bounds == "closed"
    num_locations, num_boxes = locations.shape[0], gt_boxes.shape[0]
    if num_boxes == 0:
        return torch.full((num_locations,), -1, dtype=torch.int64, device=locations.device)
    gt_boxes = gt_boxes.to(locations.dtype)
    areas = box_match_areas(gt_boxes, match_area)
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) * 0.5
    radii = strides.to(locations.dtype) * center_sampling_radius
    center_sampling = center_sampling_radius > 0
    chunk = max(1, max_pairs // num_boxes)
    if chunk >= num_locations:
        return _match_chunk(
            locations, size_lo, size_hi, radii, gt_boxes, areas, centers, center_sampling, closed
        )
    # Many boxes: process locations in chunks (bounded memory). A chunk is a band of rows
    # of one level, so only the boxes that overlap the band's y-range can match in it.
    out = torch.full((num_locations,), -1, dtype=torch.int64, device=locations.device)
    for i in range(0, num_locations, chunk):
        sl = slice(i, i + chunk)
        ys = locations[sl, 1]
        near = (gt_boxes[:, 1] < ys.max()) & (gt_boxes[:, 3] > ys.min())
        idx = near.nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        found = _match_chunk(
            locations[sl],
            size_lo[sl],
            size_hi[sl],
            radii[sl],
            gt_boxes[idx],
            areas[idx],
            centers[idx],
            center_sampling,
            closed,
        )
        out[sl] = torch.where(found >= 0, idx[found.clamp(min=0)], -1)
    return out


@FCOS_ASSIGNER_REGISTRY.register()
class FCOSAssigner:
    """The FCOS paper's assignment (with optional center sampling)."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
        center_sampling_radius: float = 0.0,
        max_pairs: int = 4_000_000,
        size_range_bounds: str = "closed",
        match_area: str = "wh",
    ):
        """
        Args:
            num_classes: number of foreground classes; background label = num_classes.
            sizes_of_interest: bounds between the levels' ranges of max(l, t, r, b).
            center_sampling_radius: 0 disables center sampling; the paper's
                improvement uses 1.5 (in units of the level's stride).
            max_pairs: memory cap, location x box pairs evaluated at once.
            size_range_bounds: "closed" (paper) or "open", see config.py.
            match_area: areas of the minimal-area rule, see :func:`box_match_areas`.
        """
        check_choice("SIZE_RANGE_BOUNDS", size_range_bounds, SIZE_RANGE_BOUNDS)
        check_choice("MATCH_AREA", match_area, MATCH_AREAS)
        self.num_classes = num_classes
        self.sizes_of_interest = tuple(sizes_of_interest)
        self.center_sampling_radius = float(center_sampling_radius)
        self.max_pairs = int(max_pairs)
        self.size_range_bounds = size_range_bounds
        self.match_area = match_area

    @classmethod
    def from_config(cls, cfg):
        return {
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "sizes_of_interest": cfg.MODEL.FCOS.SIZES_OF_INTEREST,
            "center_sampling_radius": cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS,
            "max_pairs": cfg.MODEL.FCOS.ASSIGNER_MAX_PAIRS,
            "size_range_bounds": cfg.MODEL.FCOS.SIZE_RANGE_BOUNDS,
            "match_area": cfg.MODEL.FCOS.MATCH_AREA,
        }

    def level_tensors(
        self, locations: List[Tensor], strides: Sequence[int]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Concatenated locations (L, 2) and their per-location lo, hi and stride (L,)."""
        ranges = level_size_ranges(self.sizes_of_interest, len(locations))
        device = locations[0].device
        counts = torch.tensor([len(loc) for loc in locations], device=device)
        lo = torch.tensor([r[0] for r in ranges], device=device).repeat_interleave(counts)
        hi = torch.tensor([r[1] for r in ranges], device=device).repeat_interleave(counts)
        st = torch.tensor([float(s) for s in strides], device=device).repeat_interleave(counts)
        return torch.cat(locations), lo, hi, st

    def match_image(
        self, locations: Tensor, size_lo: Tensor, size_hi: Tensor, strides: Tensor, gt_boxes: Tensor
    ) -> Tensor:
        """(L,) matched box index (-1 = background) for one image."""
        return match_locations_to_boxes(
            locations,
            size_lo,
            size_hi,
            strides,
            gt_boxes,
            self.center_sampling_radius,
            self.max_pairs,
            self.size_range_bounds,
            self.match_area,
        )

    @torch.no_grad()
    def __call__(
        self, locations: List[Tensor], strides: Sequence[int], gt_instances: List[Instances]
    ) -> FCOSTargets:
        """
        Args:
            locations: per level (H_i * W_i, 2) image coordinates (see locations.py).
            strides: per level stride.
            gt_instances: per image, with ``gt_boxes`` and ``gt_classes``.
        """
        points, lo, hi, st = self.level_tensors(locations, strides)
        labels, reg_targets, matched = [], [], []
        for inst in gt_instances:
            boxes = inst.gt_boxes.tensor.to(points.dtype)
            idx = self.match_image(points, lo, hi, st, boxes)
            pos = idx >= 0
            if boxes.shape[0] > 0:
                safe = idx.clamp(min=0)
                lab = torch.where(pos, inst.gt_classes[safe], self.num_classes)
                reg = torch.where(pos[:, None], ltrb_distances(points, boxes[safe]), 0.0)
            else:
                lab = torch.full_like(idx, self.num_classes)
                reg = points.new_zeros((points.shape[0], 4))
            labels.append(lab)
            reg_targets.append(reg)
            matched.append(idx)
        return FCOSTargets(torch.stack(labels), torch.stack(reg_targets), torch.stack(matched))


def build_fcos_assigner(cfg):
    """Build the assigner named by ``cfg.MODEL.FCOS.ASSIGNER_NAME``."""
    return FCOS_ASSIGNER_REGISTRY.get(cfg.MODEL.FCOS.ASSIGNER_NAME)(cfg)
