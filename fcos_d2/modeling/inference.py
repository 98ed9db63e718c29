"""
FCOS inference: score, select candidates per level, decode, class-aware NMS, top-k per image.

:func:`fcos_postprocess` is one graph with static shapes (top-k with masking instead of
data-dependent selection, NMS as a keep mask), used by eager inference and by every
export format alike; :func:`fcos_inference` turns its padded output into Instances.
"""

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..postprocess import CLIP_BOXES, PostProcessing
from .nms import batched_nms_mask

__all__ = [
    "CLIP_BOXES",
    "Detections",
    "clip_boxes",
    "decode_boxes",
    "fcos_inference",
    "fcos_postprocess",
]


def decode_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    """(..., 2) points and (..., 4) distances (l, t, r, b) -> (..., 4) boxes (x0, y0, x1, y1)."""
    return torch.cat((locations - ltrb[..., :2], locations + ltrb[..., 2:]), dim=-1)


def clip_boxes(boxes: Tensor, sizes: Tensor, mode: str = "image") -> Tensor:
    """(..., 4) boxes clipped to the image sizes (h, w), (..., 2) broadcastable, as ``mode``
    says (CLIP_BOXES)."""
    if mode not in CLIP_BOXES:
        raise ValueError(f"MODEL.FCOS.CLIP_BOXES_TEST must be one of {CLIP_BOXES}, got {mode!r}")
    if mode == "":
        return boxes
    if mode == "image_minus_one":
        sizes = sizes - 1
    limit = torch.stack((sizes[..., 1], sizes[..., 0], sizes[..., 1], sizes[..., 0]), dim=-1)
    return torch.minimum(boxes.clamp(min=0), limit)


class Detections(NamedTuple):
    """Detections of a batch padded to D per image, in decreasing score order."""

    boxes: Tensor  # (N, D, 4) (x0, y0, x1, y1) in the (resized) input image
    scores: Tensor  # (N, D); -1 where not valid
    classes: Tensor  # (N, D) int64
    valid: Tensor  # (N, D) bool: the first valid.sum(1) rows of each image


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """(N, L, F) and (N, K) indices -> (N, K, F)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def fcos_postprocess(
    logits: Tensor,
    box_reg: Tensor,
    centerness: Tensor,
    locations: Tensor,
    level_sizes: Sequence[int],
    image_sizes: Tensor,
    settings: Optional[PostProcessing] = None,
    **overrides: Any,
) -> Detections:
    """
    Detections of a batch, with static shapes throughout (exportable).

    Args:
        logits: (N, L, C) class logits; box_reg: (N, L, 4) distances in pixels;
        centerness: (N, L) centerness logits, for all L locations of all levels.
        locations: (L, 2) image coordinates of the locations, level after level.
        level_sizes: number of locations of each level (H_i * W_i), summing to L.
        image_sizes: (N, 2) (h, w) of each image (boxes are clipped to it as ``clip`` says).
        settings: the post-processing (:class:`~fcos_d2.postprocess.PostProcessing`; its
            defaults when None), with ``overrides`` of its fields (e.g. ``score_thresh=0.1``):
            score_thresh: a candidate needs class prob (or, with thresh_with_centerness,
            the final score) above it; topk_candidates: candidates kept per level and image
            before NMS; nms_thresh: IoU threshold of the class-aware NMS; max_detections:
            detections kept per image (D); sqrt_score: report sqrt(class prob x
            centerness) instead of the product; clip: how boxes are clipped before NMS,
            see :func:`clip_boxes`; nms_plus_one: NMS with the legacy IoU of Detectron1 /
            maskrcnn-benchmark, whose widths and heights are x1 - x0 + 1 and y1 - y0 + 1.
    """
    p = settings if settings is not None else PostProcessing()
    if overrides:
        p = p.replace(**overrides)
    score_thresh, topk_candidates, max_detections = (
        p.score_thresh,
        p.topk_candidates,
        p.max_detections,
    )
    n, _, num_classes = logits.shape
    cls_prob = logits.float().sigmoid()
    scores = cls_prob * centerness.float().sigmoid()[..., None]
    if p.sqrt_score:
        scores = scores.sqrt()
    passed = (scores if p.thresh_with_centerness else cls_prob) > score_thresh
    masked = torch.where(passed, scores, -1.0)  # scores are >= 0: -1 marks "not a candidate"

    # Per level: the top-k of its (location, class) pairs. k entries of -1 are appended so
    # that k never exceeds a level's size (no shape-dependent branch).
    top_scores, top_flat = [], []
    start = 0
    for size in level_sizes:
        level = masked[:, start : start + size].reshape(n, -1)
        level = torch.cat((level, level.new_full((n, topk_candidates), -1.0)), dim=1)
        values, index = level.topk(topk_candidates, dim=1)
        top_scores.append(values)
        # Flat (location, class) index into (L, C); appended entries point at the level's
        # last pair (they stay invalid).
        top_flat.append(start * num_classes + index.clamp(max=size * num_classes - 1))
        start = start + size
    cand_scores = torch.cat(top_scores, dim=1)  # (N, K)
    flat = torch.cat(top_flat, dim=1)
    valid = cand_scores > -0.5
    loc = torch.div(flat, num_classes, rounding_mode="floor")
    cls = flat - loc * num_classes

    boxes = decode_boxes(locations[loc], _gather_rows(box_reg.float(), loc))  # (N, K, 4)
    boxes = clip_boxes(boxes, image_sizes.to(boxes.dtype)[:, None, :], p.clip)

    # The +1 IoU of two boxes is the plain IoU of the boxes grown by 1 at x1 and y1.
    nms_boxes = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0]) if p.nms_plus_one else boxes
    groups = torch.arange(n, device=cls.device)[:, None] * num_classes + cls  # (image, class)
    kept = batched_nms_mask(
        nms_boxes.reshape(-1, 4),
        cand_scores.reshape(-1),
        groups.reshape(-1),
        valid.reshape(-1),
        float(p.nms_thresh),
        n * num_classes,
    ).reshape(valid.shape)

    final = torch.where(kept, cand_scores, -1.0)
    if final.shape[1] < max_detections:
        final = torch.cat((final, final.new_full((n, max_detections), -1.0)), dim=1)
        boxes = torch.cat((boxes, boxes.new_zeros((n, max_detections, 4))), dim=1)
        cls = torch.cat((cls, cls.new_zeros((n, max_detections))), dim=1)
    out_scores, order = final.topk(max_detections, dim=1)
    return Detections(
        boxes=_gather_rows(boxes, order),
        scores=out_scores,
        classes=torch.gather(cls, 1, order),
        valid=out_scores > -0.5,
    )


def fcos_inference(
    logits: Tensor,
    box_reg: Tensor,
    centerness: Tensor,
    locations: Tensor,
    level_sizes: Sequence[int],
    image_sizes: Union[Sequence[Tuple[int, int]], Tensor],
    settings: Optional[PostProcessing] = None,
    **overrides: Any,
) -> List[Instances]:
    """
    :func:`fcos_postprocess` (same arguments; ``image_sizes`` may be a list of (h, w)) as
    one Instances per image with ``pred_boxes``, ``scores`` and ``pred_classes``, in
    decreasing score order.
    """
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=logits.device).reshape(-1, 2)
    det = fcos_postprocess(
        logits, box_reg, centerness, locations, level_sizes, sizes, settings, **overrides
    )
    results = []
    for i in range(logits.shape[0]):
        keep = det.valid[i]
        size = tuple(int(v) for v in image_sizes[i])
        results.append(
            Instances(
                size,
                pred_boxes=Boxes(det.boxes[i][keep]),
                scores=det.scores[i][keep],
                pred_classes=det.classes[i][keep],
            )
        )
    return results
