"""FCOS model parts, registered with Detectron2's registries on import."""

from .assigner import (
    FCOS_ASSIGNER_REGISTRY,
    FCOSAssigner,
    FCOSTargets,
    build_fcos_assigner,
    compute_centerness_targets,
    match_locations_to_boxes,
)
from .atss import ATSSAssigner
from .backbone import build_fcos_resnet_fpn_backbone
from .head import FCOS_HEAD_REGISTRY, FCOSHead, build_fcos_head
from .inference import fcos_inference
from .locations import compute_locations
from .losses import fcos_losses, iou_loss
from .meta_arch import FCOS
from .tta import FCOSWithTTA

__all__ = [
    "ATSSAssigner",
    "FCOS",
    "FCOSAssigner",
    "FCOSHead",
    "FCOSTargets",
    "FCOSWithTTA",
    "FCOS_ASSIGNER_REGISTRY",
    "FCOS_HEAD_REGISTRY",
    "build_fcos_assigner",
    "build_fcos_head",
    "build_fcos_resnet_fpn_backbone",
    "compute_centerness_targets",
    "compute_locations",
    "fcos_inference",
    "fcos_losses",
    "iou_loss",
    "match_locations_to_boxes",
]
