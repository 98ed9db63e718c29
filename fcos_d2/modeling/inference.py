"""FCOS inference: score, select candidates per level, decode, class-aware NMS, top-k per image."""

from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..config import check_choice

__all__ = ["CLIP_BOXES", "clip_boxes", "decode_boxes", "fcos_inference", "topk_per_group"]

#: Where boxes are clipped before NMS (MODEL.FCOS.CLIP_BOXES_TEST): "image" ([0, w] x [0, h]),
#: "image_minus_one" ([0, w - 1] x [0, h - 1], maskrcnn-benchmark) or "" (not before NMS).
CLIP_BOXES = ("image", "image_minus_one", "")


def decode_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    """(K, 2) points and (K, 4) distances (l, t, r, b) -> (K, 4) boxes (x0, y0, x1, y1)."""
    return torch.cat((locations - ltrb[:, :2], locations + ltrb[:, 2:]), dim=1)


def clip_boxes(boxes: Tensor, sizes: Tensor, mode: str = "image") -> Tensor:
    """(K, 4) boxes clipped to the (K, 2) image sizes (h, w) as ``mode`` says (CLIP_BOXES)."""
    check_choice("CLIP_BOXES_TEST", mode, CLIP_BOXES)
    if mode == "":
        return boxes
    if mode == "image_minus_one":
        sizes = sizes - 1
    limit = torch.stack((sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]), dim=1)
    return torch.minimum(boxes.clamp(min=0), limit)


def _descending_key(scores: Tensor) -> Tensor:
    """(K,) float scores -> (K,) int64 in [0, 2**32) that sorts ascending as scores descend."""
    bits = scores.float().view(torch.int32).long() & 0xFFFFFFFF  # IEEE-754 bits as uint32
    # Order-preserving map of float32 bits onto uint32: flip every bit of negatives and
    # only the sign bit of the rest; then reverse for a descending order.
    ascending = torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)
    return 0xFFFFFFFF - ascending


def _nonnegative_descending_key(scores: Tensor) -> Tensor:
    """(K,) scores >= +0.0 -> (K,) int64 in [0, 2**31) that sorts ascending as scores descend."""
    return (0x7FFFFFFF - scores.float().view(torch.int32)).long()  # bits of +0.0..+inf, NaN


#: Histogram buckets per group of the pre-selection in :func:`topk_per_group`: the top 16
#: bits of the 32-bit score key (sign, exponent and 7 mantissa bits).
_BUCKET_BITS = 16


def _preselect(key: Tensor, groups: Tensor, k: int, num_groups: int, score_bits: int) -> Tensor:
    """
    (K,) bool: a superset of the ``k`` smallest keys of each group, from one histogram of
    the keys' top bits per group. It keeps every element whose bucket is at or below the
    first bucket where the group's cumulative count reaches ``k``: exact, ties included.
    """
    shift = score_bits - _BUCKET_BITS
    buckets = key >> shift
    num_buckets = 1 << _BUCKET_BITS
    hist = torch.bincount(groups * num_buckets + buckets, minlength=num_groups * num_buckets)
    cumulative = hist.view(num_groups, num_buckets).cumsum(1)
    last_bucket = (cumulative < k).sum(1)  # per group; num_buckets: the group has < k
    return buckets <= last_bucket.index_select(0, groups)


def topk_per_group(
    scores: Tensor,
    groups: Tensor,
    k: int,
    *,
    num_groups: Optional[int] = None,
    nonnegative: bool = False,
) -> Tensor:
    """
    Indices of the ``k`` highest scores within each group, without a loop over groups.

    One integer sort of (group, score) keys: group ids in the high bits, the score's
    order-preserving float32 bits below them (integer sorts are several times faster
    than float sorts on the CPU). Equal scores keep index order; float64 scores take a
    two-pass sort so that they are ranked exactly.

    Args:
        scores: (K,) scores; groups: (K,) int64 group ids in [0, 2**31).
        num_groups: if given, every group id is below it. Ranks then come from group
            counts instead of a binary search, and when there are many more scores than
            ``k`` per group, a histogram of the keys' top bits per group first discards
            elements that cannot be among the ``k`` (same result, sorting far fewer).
        nonnegative: the caller promises scores >= +0.0 (e.g. probabilities), whose
            float32 bits already sort like the scores: a cheaper key.

    Returns:
        (K',) indices into scores, ordered by group then by decreasing score.
    """
    n = len(scores)
    groups = groups.long()
    if scores.dtype == torch.float64:
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(groups[order], stable=True)]
        sorted_groups = groups[order]
    else:
        if nonnegative:
            key, score_bits = _nonnegative_descending_key(scores), 31
        else:
            key, score_bits = _descending_key(scores), 32
        subset = None
        if num_groups is not None and n > 8 * k * num_groups and k > 0:
            subset = _preselect(key, groups, k, num_groups, score_bits).nonzero().squeeze(1)
            key, groups = key.index_select(0, subset), groups.index_select(0, subset)
        sorted_keys, order = torch.sort((groups << score_bits) | key, stable=True)
        sorted_groups = sorted_keys >> score_bits
        if subset is not None:
            order = subset.index_select(0, order)
    if num_groups is not None:
        counts = torch.bincount(sorted_groups, minlength=num_groups)
        first_of_group = (counts.cumsum(0) - counts).index_select(0, sorted_groups)
    else:
        first_of_group = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.arange(len(order), device=scores.device) - first_of_group
    return order[rank < k]


def fcos_inference(
    logits: Tensor,
    box_reg: Tensor,
    centerness: Tensor,
    locations: Tensor,
    level_ids: Tensor,
    image_sizes: Sequence[Tuple[int, int]],
    *,
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.6,
    max_detections: int = 100,
    thresh_with_centerness: bool = False,
    sqrt_score: bool = False,
    num_levels: Optional[int] = None,
    clip: str = "image",
    nms_plus_one: bool = False,
) -> List[Instances]:
    """
    Detections of a batch, all images and levels at once.

    Args:
        logits: (N, L, C) class logits; box_reg: (N, L, 4) distances in pixels;
        centerness: (N, L) centerness logits, for all L locations of all levels.
        locations: (L, 2) image coordinates; level_ids: (L,) level index of each location.
        image_sizes: (h, w) of each image (boxes are clipped to it as ``clip`` says).
        score_thresh: a candidate needs class prob (or, with thresh_with_centerness, the
            final score) above it.
        topk_candidates: candidates kept per level and image before NMS.
        nms_thresh: IoU threshold of the class-aware NMS.
        max_detections: detections kept per image.
        sqrt_score: report sqrt(class prob x centerness) instead of the product.
        num_levels: number of levels (default: from level_ids, which costs a host sync).
        clip: how boxes are clipped before NMS, see :func:`clip_boxes`.
        nms_plus_one: NMS with the legacy IoU of Detectron1 / maskrcnn-benchmark, whose
            widths and heights are x1 - x0 + 1 and y1 - y0 + 1.

    Returns:
        per image, Instances with ``pred_boxes``, ``scores``, ``pred_classes``, in
        decreasing score order.
    """
    num_images, _, num_classes = logits.shape
    cls_prob = logits.float().sigmoid()
    scores = cls_prob * centerness.float().sigmoid()[..., None]
    if sqrt_score:
        scores = scores.sqrt()
    candidates = (scores if thresh_with_centerness else cls_prob) > score_thresh
    # Candidates as flat indices into (N, L, C): one gather instead of three index tensors.
    flat = candidates.reshape(-1).nonzero().squeeze(1)
    cand_scores = scores.reshape(-1).index_select(0, flat)
    num_locations = len(level_ids)

    if num_levels is None:
        num_levels = int(level_ids.max()) + 1 if len(level_ids) else 1
    # Group (image, level) of every location of the batch, then of every candidate.
    image_ids = torch.arange(num_images, device=level_ids.device)
    loc_groups = (image_ids[:, None] * num_levels + level_ids[None, :]).reshape(-1)
    keep = topk_per_group(
        cand_scores, loc_groups.index_select(0, flat // num_classes), topk_candidates,
        num_groups=num_images * num_levels, nonnegative=True,
    )  # fmt: skip
    flat, cand_scores = flat[keep], cand_scores[keep]
    img_loc, cls = flat // num_classes, flat % num_classes
    img, loc = img_loc // num_locations, img_loc % num_locations

    boxes = decode_boxes(locations[loc], box_reg[img, loc].float())
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)[img]
    boxes = clip_boxes(boxes, sizes, clip)

    # The +1 IoU of two boxes is the plain IoU of the boxes grown by 1 at x1 and y1.
    nms_boxes = boxes + boxes.new_tensor([0, 0, 1, 1]) if nms_plus_one else boxes
    keep = batched_nms(nms_boxes, cand_scores, img * num_classes + cls, nms_thresh)
    keep = keep[
        topk_per_group(
            cand_scores[keep], img[keep], max_detections, num_groups=num_images, nonnegative=True
        )
    ]
    img, boxes, cand_scores, cls = img[keep], boxes[keep], cand_scores[keep], cls[keep]

    counts = torch.bincount(img, minlength=num_images).tolist()
    results = []
    for size, b, s, c in zip(
        image_sizes, boxes.split(counts), cand_scores.split(counts), cls.split(counts)
    ):
        results.append(Instances(tuple(size), pred_boxes=Boxes(b), scores=s, pred_classes=c))
    return results
