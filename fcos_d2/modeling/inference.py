"""FCOS inference: score, select candidates per level, decode, class-aware NMS, top-k per image."""

from typing import List, Sequence, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["decode_boxes", "fcos_inference", "topk_per_group"]


def decode_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    """(K, 2) points and (K, 4) distances (l, t, r, b) -> (K, 4) boxes (x0, y0, x1, y1)."""
    return torch.cat((locations - ltrb[:, :2], locations + ltrb[:, 2:]), dim=1)


def _descending_key(scores: Tensor) -> Tensor:
    """(K,) float scores -> (K,) int64 in [0, 2**32) that sorts ascending as scores descend."""
    bits = scores.float().view(torch.int32).long() & 0xFFFFFFFF  # IEEE-754 bits as uint32
    # Order-preserving map of float32 bits onto uint32: flip every bit of negatives and
    # only the sign bit of the rest; then reverse for a descending order.
    ascending = torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)
    return 0xFFFFFFFF - ascending


def topk_per_group(scores: Tensor, groups: Tensor, k: int) -> Tensor:
    """
    Indices of the ``k`` highest scores within each group, without a loop over groups.

    One integer sort of (group, score) keys: group ids in the high 32 bits, the score's
    order-preserving float32 bits in the low ones (integer sorts are several times faster
    than float sorts on the CPU). Equal scores keep index order; float64 scores take a
    two-pass sort so that they are ranked exactly.

    Args:
        scores: (K,) scores; groups: (K,) int64 group ids in [0, 2**31).

    Returns:
        (K',) indices into scores, ordered by group then by decreasing score.
    """
    if scores.dtype == torch.float64:
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(groups[order], stable=True)]
    else:
        order = torch.argsort((groups.long() << 32) | _descending_key(scores), stable=True)
    sorted_groups = groups[order]
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
    num_levels: int = None,
) -> List[Instances]:
    """
    Detections of a batch, all images and levels at once.

    Args:
        logits: (N, L, C) class logits; box_reg: (N, L, 4) distances in pixels;
        centerness: (N, L) centerness logits, for all L locations of all levels.
        locations: (L, 2) image coordinates; level_ids: (L,) level index of each location.
        image_sizes: (h, w) of each image (boxes are clipped to it).
        score_thresh: a candidate needs class prob (or, with thresh_with_centerness, the
            final score) above it.
        topk_candidates: candidates kept per level and image before NMS.
        nms_thresh: IoU threshold of the class-aware NMS.
        max_detections: detections kept per image.
        sqrt_score: report sqrt(class prob x centerness) instead of the product.
        num_levels: number of levels (default: from level_ids, which costs a host sync).

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
    img, loc, cls = candidates.nonzero(as_tuple=True)
    cand_scores = scores[img, loc, cls]

    if num_levels is None:
        num_levels = int(level_ids.max()) + 1 if len(level_ids) else 1
    keep = topk_per_group(cand_scores, img * num_levels + level_ids[loc], topk_candidates)
    img, loc, cls, cand_scores = img[keep], loc[keep], cls[keep], cand_scores[keep]

    boxes = decode_boxes(locations[loc], box_reg[img, loc].float())
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)[img]
    limit = torch.stack((sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]), dim=1)
    boxes = torch.minimum(boxes.clamp(min=0), limit)

    keep = batched_nms(boxes, cand_scores, img * num_classes + cls, nms_thresh)
    keep = keep[topk_per_group(cand_scores[keep], img[keep], max_detections)]
    img, boxes, cand_scores, cls = img[keep], boxes[keep], cand_scores[keep], cls[keep]

    counts = torch.bincount(img, minlength=num_images).tolist()
    results = []
    for size, b, s, c in zip(
        image_sizes, boxes.split(counts), cand_scores.split(counts), cls.split(counts)
    ):
        results.append(Instances(tuple(size), pred_boxes=Boxes(b), scores=s, pred_classes=c))
    return results
