"""
Class-aware NMS as one operator, so that eager inference and every export format run the
same post-processing graph with static shapes.

``torch.ops.fcos_d2.batched_nms_mask`` returns a keep mask of the candidates' shape (no
data-dependent output size). Eagerly it runs Detectron2's / torchvision's ``batched_nms``
on the valid candidates; exported, it becomes ONNX ``NonMaxSuppression`` with one class per
group (:func:`onnx_batched_nms_mask`), or, in a ``torch.export`` program that must load
without fcos_d2, torchvision's ``nms`` on boxes moved apart per group in float64
(:func:`decompose_batched_nms_mask`).
"""

import torch
import torchvision
from detectron2.layers import batched_nms
from torch import Tensor

__all__ = [
    "batched_nms_mask",
    "decompose_batched_nms_mask",
    "onnx_batched_nms_mask",
    "register_nms_fake_for_export",
]


@torch.library.custom_op("fcos_d2::batched_nms_mask", mutates_args=())
def batched_nms_mask(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    valid: Tensor,
    iou_threshold: float,
    num_groups: int,
) -> Tensor:
    """
    Args:
        boxes: (K, 4) (x0, y0, x1, y1); scores: (K,); groups: (K,) int64 in
            [0, num_groups): boxes of different groups never suppress each other.
        valid: (K,) bool, candidates that take part (the others are not kept).
        iou_threshold: a box is suppressed by a higher-scoring one of its group whose IoU
            with it exceeds this.

    Returns:
        (K,) bool, True for the kept candidates.
    """
    idx = valid.nonzero().squeeze(1)
    keep = batched_nms(boxes[idx], scores[idx], groups[idx], iou_threshold)
    return torch.zeros_like(valid).index_fill_(0, idx[keep], True)


@batched_nms_mask.register_fake
def _batched_nms_mask_fake(boxes, scores, groups, valid, iou_threshold, num_groups):
    return torch.empty_like(valid)


def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch._check(dets.dim() == 2 and dets.size(1) == 4)
    torch._check(scores.dim() == 1 and dets.size(0) == scores.size(0))
    return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


_NMS_FAKE_REGISTERED = False


def register_nms_fake_for_export() -> None:
    """
    Replace torchvision's fake (shape-only) ``nms`` kernel, once per process, before a
    ``torch.export``: torchvision's uses a deprecated helper whose data-dependent size has
    min=2, which torch.export bakes into the program as a runtime check (failing when 0 or
    1 box is kept). Only exporting needs it (listed in fcos_d2/compat.py); eager torchvision
    is unaffected (fake kernels run only under tracing).
    """
    global _NMS_FAKE_REGISTERED
    if not _NMS_FAKE_REGISTERED:
        torch.library.register_fake("torchvision::nms")(_nms_fake)
        _NMS_FAKE_REGISTERED = True


def decompose_batched_nms_mask(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    valid: Tensor,
    iou_threshold: float,
    num_groups: int,
) -> Tensor:
    """
    :func:`batched_nms_mask` from torchvision's ``nms`` alone (for ``torch.export`` programs):
    the valid boxes of group g move by g times the boxes' extent, in float64 so that the
    shift costs no precision.
    """
    idx = valid.nonzero().squeeze(1)
    b = boxes.index_select(0, idx).double()
    extent = (boxes.double().amax() - boxes.double().amin()).abs() + 1.0
    shifted = b + (groups.index_select(0, idx).double() * extent)[:, None]
    keep = torchvision.ops.nms(shifted, scores.index_select(0, idx).double(), iou_threshold)
    return torch.zeros_like(valid).index_fill(0, idx.index_select(0, keep), True)


def onnx_batched_nms_mask(
    boxes, scores, groups, valid, iou_threshold: float, num_groups: int
):  # pragma: no cover - called by the ONNX exporter with onnxscript values
    """ONNX translation: NonMaxSuppression with one class per group, then a keep mask."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    first = op.Constant(value_ints=[0])
    k = op.Shape(scores)  # (1,)
    ids = op.Range(
        op.Constant(value_int=0), op.Constant(value_int=num_groups), op.Constant(value_int=1)
    )
    member = op.And(
        op.Equal(op.Unsqueeze(groups, first), op.Unsqueeze(ids, op.Constant(value_ints=[1]))),
        op.Unsqueeze(valid, first),
    )  # (G, K)
    minus_one = op.CastLike(op.Constant(value_float=-1.0), scores)
    per_group = op.Where(member, op.Unsqueeze(scores, first), minus_one)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, first),  # (1, K, 4)
        op.Unsqueeze(per_group, first),  # (1, G, K)
        k,  # at most K per group
        op.Constant(value_float=iou_threshold),
        op.Constant(value_float=-0.5),  # drops the -1 of other groups and invalid ones
    )  # (S, 3): batch, group, box
    kept = op.Gather(selected, op.Constant(value_int=2), axis=1)
    ones = op.Expand(op.Constant(value_float=1.0), op.Shape(kept))
    mask = op.ScatterElements(op.ConstantOfShape(k), kept, ones, axis=0)
    return op.Cast(mask, to=TensorProto.BOOL)
