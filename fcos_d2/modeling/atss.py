"""
ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020, "Bridging the Gap
Between Anchor-based and Anchor-free Detection"), as an FCOS assigner.

For every ground-truth box g (paper, Algorithm 1):

1. on each level, the k locations whose centres are nearest (L2) to g's centre are
   candidates (all locations of a level with fewer than k);
2. the IoU of each candidate's virtual anchor (a square of side ``anchor_scale * stride``
   centred on the location; the paper's FCOS-based setting uses 8S) with g;
3. threshold t_g = mean + standard deviation of those IoUs (the unbiased standard
   deviation, as ``torch.std`` in the official code; 0 for a single candidate);
4. positives: candidates with IoU >= t_g whose location lies inside g, i.e.
   min(l, t, r, b) > 0.01 px (the official code's test);
5. a location positive for several boxes goes to the one of highest IoU (equal IoUs: the
   box listed first, as ``torch.max`` picks it in the official code).

Ties in step 1 (equal distances) go to the location listed first (row-major order within
the level), so the assignment is deterministic. Regression targets are the (l, t, r, b)
distances of the location to its box, as FCOS's (the ATSS paper's FCOS-based setting
regresses from the point).

Step 1 works on each level's grid of locations: the k nearest locations lie in a small
window around the box centre (its size is computed, not guessed, per box; see
:func:`_nearest_on_grid`), so time and memory grow linearly with the number of boxes and
never with locations x boxes.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor

from .assigner import FCOS_ASSIGNER_REGISTRY, FCOSTargets, ltrb_distances

__all__ = ["ATSSAssigner", "INSIDE_MARGIN", "atss_match", "grid_axes"]

#: A positive's location must be more than this many pixels inside its box (official code).
INSIDE_MARGIN = 0.01


def grid_axes(locations: Tensor) -> Tuple[Tensor, Tensor]:
    """
    The x coordinates of the columns (W,) and y coordinates of the rows (H,) of one
    level's locations, given in row-major order (H * W, 2) as ``compute_locations`` makes
    them. Raises a ValueError if the locations are not such a grid.
    """
    n = locations.shape[0]
    if n == 0:
        raise ValueError("ATSSAssigner: a level has no locations")
    width = int((locations[:, 1] == locations[0, 1]).sum())
    xs, ys = locations[:width, 0], locations[::width, 1]
    ok = n % width == 0 and bool((xs[1:] > xs[:-1]).all()) and bool((ys[1:] > ys[:-1]).all())
    if ok:
        grid = locations.reshape(len(ys), width, 2)
        ok = bool((grid[..., 0] == xs).all()) and bool((grid[..., 1] == ys[:, None]).all())
    if not ok:
        raise ValueError(
            "ATSSAssigner needs each level's locations on a row-major grid "
            "(as fcos_d2.modeling.locations.compute_locations returns them)"
        )
    return xs, ys


def _block_shape(count: int, width: int, height: int) -> Tuple[int, int]:
    """Columns and rows (c <= width, r <= height) of a near-square block of >= count cells."""
    c = min(width, math.ceil(math.sqrt(count)))
    r = min(height, math.ceil(count / c))
    if c * r < count:
        c = min(width, math.ceil(count / r))
    return c, r


def _nearest_on_grid(xs: Tensor, ys: Tensor, centers: Tensor, k: int) -> Tensor:
    """
    Row-major indices (M, min(k, H * W)) of the k grid locations nearest to each centre,
    nearest first; equal distances: lower index first.

    Exact without a locations x boxes matrix: the c nearest columns x r nearest rows
    (c * r >= k) hold at least k locations within distance D = sqrt(a^2 + b^2) (a, b: the
    distances of the c-th nearest column and r-th nearest row), so the k nearest, and every
    location tied with the k-th, lie in the columns and rows within D of the centre.
    """
    width, height = len(xs), len(ys)
    count = min(k, width * height)
    c, r = _block_shape(count, width, height)
    dx2 = (xs[None, :] - centers[:, 0:1]) ** 2  # (M, W)
    dy2 = (ys[None, :] - centers[:, 1:2]) ** 2  # (M, H)
    bound2 = dx2.kthvalue(c, dim=1).values + dy2.kthvalue(r, dim=1).values  # (M,)

    def window(d2: Tensor) -> Tuple[Tensor, Tensor]:
        # The columns (rows) within the bound form an interval: first index + length.
        inside = d2 <= bound2[:, None]
        size = inside.sum(dim=1)
        span = torch.arange(int(size.max()), device=d2.device)
        idx = (inside.to(torch.int8).argmax(dim=1)[:, None] + span).clamp(max=d2.shape[1] - 1)
        return idx, span < size[:, None]

    cols, col_ok = window(dx2)  # (M, Wc)
    rows, row_ok = window(dy2)  # (M, Wr)
    d2 = dy2.gather(1, rows)[:, :, None] + dx2.gather(1, cols)[:, None, :]  # (M, Wr, Wc)
    ok = row_ok[:, :, None] & col_ok[:, None, :]
    d2 = torch.where(ok, d2, torch.full_like(d2, math.inf)).flatten(1)
    flat = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)
    # The window is enumerated row-major, so a stable sort breaks ties by location index.
    order = torch.sort(d2, dim=1, stable=True).indices[:, :count]
    return flat.gather(1, order)


def atss_match(
    axes: Sequence[Tuple[Tensor, Tensor]],
    strides: Sequence[float],
    gt_boxes: Tensor,
    topk: int = 9,
    anchor_scale: float = 8.0,
    image_ids: Optional[Tensor] = None,
    num_images: int = 1,
) -> Tensor:
    """
    ATSS assignment of one image, or of several images at once.

    Args:
        axes: per level the grid of its locations, (xs (W_i,), ys (H_i,)) as
            :func:`grid_axes` returns them; location j of the level is
            (xs[j % W_i], ys[j // W_i]).
        strides: per level stride (the virtual anchors are ``anchor_scale * stride`` wide).
        gt_boxes: (M, 4) boxes (x0, y0, x1, y1); M may be 0.
        image_ids: optional (M,) int64 image of each box, in [0, num_images) and
            non-decreasing (boxes grouped by image); None: all in image 0.

    Returns:
        (num_images * L,) int64 index into gt_boxes of each location's box (per image, the
        locations of all levels concatenated, L = sum_i H_i * W_i), -1 for background.
    """
    device = gt_boxes.device
    per_image = sum(len(xs) * len(ys) for xs, ys in axes)
    num_locations = num_images * per_image
    out = torch.full((num_locations,), -1, dtype=torch.int64, device=device)
    num_boxes = gt_boxes.shape[0]
    if num_boxes == 0:
        return out
    boxes = gt_boxes.to(torch.float64)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    cand_idx, cand_iou, cand_inside = [], [], []
    start = 0
    for (xs, ys), stride in zip(axes, strides):
        xs, ys = xs.to(torch.float64), ys.to(torch.float64)
        idx = _nearest_on_grid(xs, ys, centers, topk)  # (M, k_i) within the level
        px = xs[idx % len(xs)]
        py = ys[torch.div(idx, len(xs), rounding_mode="floor")]
        half = anchor_scale * float(stride) / 2
        iw = torch.minimum(px + half, boxes[:, 2:3]) - torch.maximum(px - half, boxes[:, 0:1])
        ih = torch.minimum(py + half, boxes[:, 3:4]) - torch.maximum(py - half, boxes[:, 1:2])
        inter = iw.clamp(min=0) * ih.clamp(min=0)
        box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
        cand_iou.append(inter / (box_area + (2 * half) ** 2 - inter))
        dist = ltrb_distances(torch.stack((px, py), dim=-1), boxes[:, None, :])
        cand_inside.append(dist.min(dim=-1).values > INSIDE_MARGIN)
        cand_idx.append(idx + start)
        start += len(xs) * len(ys)
    idx = torch.cat(cand_idx, dim=1)  # (M, K)
    if image_ids is not None:
        idx = idx + image_ids[:, None] * per_image
    iou = torch.cat(cand_iou, dim=1)
    # IoU >= mean + std, evaluated on the IoUs minus their minimum: the same statistic, but
    # exact where all candidates have the same IoU (mean and std of zeros are 0).
    dev = iou - iou.min(dim=1, keepdim=True).values
    threshold = dev.mean(dim=1)
    if dev.shape[1] > 1:
        threshold = threshold + dev.std(dim=1)
    pos = (dev >= threshold[:, None]) & torch.cat(cand_inside, dim=1)
    # Locations claimed by several boxes: highest IoU, then lowest box index.
    box_ids = torch.arange(num_boxes, device=device)[:, None].expand_as(idx)
    loc_ids, box_ids, ious = idx[pos], box_ids[pos], iou[pos]
    best = torch.full((num_locations,), -math.inf, dtype=iou.dtype, device=device)
    best = best.scatter_reduce(0, loc_ids, ious, "amax")
    win = ious == best[loc_ids]
    first = torch.full((num_locations,), num_boxes, dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, loc_ids[win], box_ids[win], "amin")
    return torch.where(first < num_boxes, first, out)


@FCOS_ASSIGNER_REGISTRY.register()
class ATSSAssigner:
    """ATSS assignment (``MODEL.FCOS.ASSIGNER_NAME: "ATSSAssigner"``); see the module doc."""

    @configurable
    def __init__(self, *, num_classes: int, topk: int = 9, anchor_scale: float = 8.0):
        """
        Args:
            num_classes: number of foreground classes; background label = num_classes.
            topk: candidates per level per box (k, the paper's 9).
            anchor_scale: side of a location's virtual square anchor, in strides (8).
        """
        if topk < 1:
            raise ValueError(f"MODEL.FCOS.ATSS_TOPK must be >= 1, got {topk}")
        if not anchor_scale > 0:
            raise ValueError(f"MODEL.FCOS.ATSS_ANCHOR_SCALE must be > 0, got {anchor_scale}")
        self.num_classes = num_classes
        self.topk = int(topk)
        self.anchor_scale = float(anchor_scale)

    @classmethod
    def from_config(cls, cfg):
        return {
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "topk": cfg.MODEL.FCOS.ATSS_TOPK,
            "anchor_scale": cfg.MODEL.FCOS.ATSS_ANCHOR_SCALE,
        }

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
        points = torch.cat(locations)
        axes = [grid_axes(loc) for loc in locations]
        # All images at once: boxes are matched independently, locations per image.
        boxes = torch.cat([inst.gt_boxes.tensor for inst in gt_instances]).to(points.dtype)
        classes = torch.cat([inst.gt_classes for inst in gt_instances])
        counts = torch.tensor([len(inst) for inst in gt_instances], device=points.device)
        image_ids = torch.repeat_interleave(torch.arange(len(counts), device=points.device), counts)
        idx = atss_match(
            axes, strides, boxes, self.topk, self.anchor_scale, image_ids, len(gt_instances)
        ).reshape(len(gt_instances), -1)  # (N, L) index into the concatenated boxes
        pos = idx >= 0
        first_box = torch.cumsum(counts, 0) - counts  # (N,) offset of each image's boxes
        if boxes.shape[0] > 0:
            safe = idx.clamp(min=0)
            labels = torch.where(pos, classes[safe], self.num_classes)
            reg = torch.where(pos[..., None], ltrb_distances(points, boxes[safe]), 0.0)
        else:
            labels = torch.full_like(idx, self.num_classes)
            reg = points.new_zeros((*idx.shape, 4))
        matched = torch.where(pos, idx - first_box[:, None], -1)
        return FCOSTargets(labels, reg, matched)
