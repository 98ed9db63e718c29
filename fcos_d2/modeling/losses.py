"""FCOS losses: focal loss on all locations, IoU loss and centerness BCE on positives."""

from typing import Dict, Optional, Union

import torch
import torch.distributed as dist
from fvcore.nn import sigmoid_focal_loss
from torch import Tensor
from torch.nn import functional as F

from ..config import check_choice
from .assigner import compute_centerness_targets

__all__ = ["average_across_workers", "fcos_losses", "iou_loss"]

LOC_LOSS_TYPES = ("iou", "linear_iou", "giou")
#: Units of the IoU's smoothing term (MODEL.FCOS.IOU_LOSS_SMOOTH); "" = no smoothing.
IOU_LOSS_SMOOTH = ("", "pixel", "stride")


def iou_loss(
    pred: Tensor,
    target: Tensor,
    loss_type: str = "iou",
    weight: Optional[Tensor] = None,
    reduction: str = "sum",
    eps: float = 1e-7,
    smooth: Union[float, Tensor] = 0.0,
) -> Tensor:
    """
    IoU losses between boxes given as (l, t, r, b) distances from the same points.

    Args:
        pred, target: (P, 4) non-negative distances.
        loss_type: "iou" (-log IoU), "linear_iou" (1 - IoU) or "giou" (1 - GIoU).
        weight: optional (P,) per-box weights.
        reduction: "sum", "mean" or "none".
        smooth: a float or (P,) term added to intersection and union, IoU = (I + smooth) /
            (U + smooth + eps), in the units of the distances squared. The original FCOS and
            AdelaiDet add 1 in the units of their regression targets (see config.py).

    Returns:
        scalar, or (P,) for reduction="none".
    """
    check_choice("LOC_LOSS_TYPE", loss_type, LOC_LOSS_TYPES)
    pred = pred.float()
    target = target.float()
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    lo = torch.minimum(pred, target)
    inter = (lo[:, 0] + lo[:, 2]).clamp(min=0) * (lo[:, 1] + lo[:, 3]).clamp(min=0)
    union = pred_area + target_area - inter
    iou = (inter + smooth) / (union + smooth + eps)
    if loss_type == "iou":
        loss = -torch.log(iou.clamp(min=eps))
    elif loss_type == "linear_iou":
        loss = 1.0 - iou
    else:
        hi = torch.maximum(pred, target)
        enclosing = (hi[:, 0] + hi[:, 2]) * (hi[:, 1] + hi[:, 3])
        loss = 1.0 - (iou - (enclosing - union) / (enclosing + eps))
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    return loss


def average_across_workers(value: Tensor) -> Tensor:
    """Sum of a scalar tensor over all workers divided by the world size (no-op on 1 worker)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def fcos_losses(
    logits: Tensor,
    box_reg: Tensor,
    centerness: Tensor,
    labels: Tensor,
    reg_targets: Tensor,
    *,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    loc_loss_type: str = "iou",
    loc_weight_by_centerness: bool = False,
    loss_weights: Optional[Dict[str, float]] = None,
    iou_smooth: Union[float, Tensor] = 0.0,
) -> Dict[str, Tensor]:
    """
    Args:
        logits: (N, L, C) class logits of all locations of all levels.
        box_reg: (N, L, 4) predicted (l, t, r, b) in pixels.
        centerness: (N, L) centerness logits.
        labels: (N, L) int64 targets, background = num_classes.
        reg_targets: (N, L, 4) target (l, t, r, b) (used on positives only).
        iou_smooth: float or (L,) term added to the IoU's intersection and union, in
            pixels^2 (see :func:`iou_loss`).

    Returns:
        dict with ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr``, each normalised by
        the number of positives averaged over workers (at least 1); with
        ``loc_weight_by_centerness`` the box loss is weighted by the centerness targets and
        normalised by their sum (averaged over workers) instead.
    """
    weights = {"loss_fcos_cls": 1.0, "loss_fcos_loc": 1.0, "loss_fcos_ctr": 1.0}
    weights.update(loss_weights or {})
    pos = labels != num_classes
    num_pos = average_across_workers(pos.sum().to(torch.float32)).clamp(min=1.0)

    classes = torch.arange(num_classes, device=labels.device)
    cls_targets = (labels[..., None] == classes).to(torch.float32)
    loss_cls = sigmoid_focal_loss(
        logits.float(), cls_targets, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
    )

    # Box and centerness losses on positives, computed densely with masks (no boolean
    # indexing: no host sync, static shapes). Negatives get a harmless unit box.
    mask = pos[..., None]
    targets = torch.where(mask, reg_targets.float(), 1.0)
    preds = torch.where(mask, box_reg.float(), 1.0)
    posf = pos.to(torch.float32)
    ctr_targets = compute_centerness_targets(targets) * posf
    if isinstance(iou_smooth, Tensor):
        iou_smooth = iou_smooth.expand(pos.shape).reshape(-1)
    loc = iou_loss(
        preds.reshape(-1, 4),
        targets.reshape(-1, 4),
        loc_loss_type,
        reduction="none",
        smooth=iou_smooth,
    )
    loc = loc.reshape(pos.shape) * posf
    if loc_weight_by_centerness:
        loc_normalizer = average_across_workers(ctr_targets.sum()).clamp(min=1e-6)
        loss_loc = (loc * ctr_targets).sum() / loc_normalizer
    else:
        loss_loc = loc.sum() / num_pos
    loss_ctr = (
        F.binary_cross_entropy_with_logits(centerness.float(), ctr_targets, reduction="none") * posf
    ).sum()
    return {
        "loss_fcos_cls": loss_cls / num_pos * weights["loss_fcos_cls"],
        "loss_fcos_loc": loss_loc * weights["loss_fcos_loc"],
        "loss_fcos_ctr": loss_ctr / num_pos * weights["loss_fcos_ctr"],
    }
