"""ResNet + FPN (res3-res5) + P6/P7: the FCOS backbone, built from Detectron2's blocks."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import complete_fcos_config
from ..registry import BACKBONE_NAME, register_as
from .deform import use_deform_conv_fallback
from .fusion import fold_frozen_batchnorm

__all__ = ["build_fcos_resnet_fpn_backbone"]


@register_as(BACKBONE_REGISTRY, BACKBONE_NAME)
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    Registered as ``"fcos_d2.build_resnet_fpn_backbone"`` (``cfg.MODEL.BACKBONE.NAME``).
    Detectron2's ResNet/ResNeXt (``cfg.MODEL.RESNETS``) and FPN (``cfg.MODEL.FPN``) with
    P6 and P7 from stride-2 3x3 convs on ``cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE``
    ("p5" as in the FCOS paper, or "res5" as in RetinaNet), ReLU between P6 and P7.

    Output features p3..p7 with strides 8..128 (for FPN.IN_FEATURES = res3, res4, res5).
    With ``cfg.MODEL.FCOS.FOLD_FROZEN_BN``, each conv + FrozenBatchNorm2d of the ResNet runs
    as one convolution (same parameters and outputs, see fusion.py). Without p6/p7 in
    ``cfg.MODEL.FCOS.IN_FEATURES`` the P6/P7 block is left out. Deformable convolutions
    (``cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE``) run with torchvision's op where Detectron2's
    compiled one is unavailable (see deform.py).
    """
    cfg = complete_fcos_config(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    use_deform_conv_fallback(bottom_up)
    if cfg.MODEL.FCOS.FOLD_FROZEN_BN:
        fold_frozen_batchnorm(bottom_up)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_block = None
    # A head on P3-P5 only gets no P6/P7 convs (DDP needs every parameter used).
    if {"p6", "p7"} & set(cfg.MODEL.FCOS.IN_FEATURES):
        top_in = cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE
        if top_in == "p5":
            top_in_channels = out_channels
        elif top_in in bottom_up.output_shape():
            top_in_channels = bottom_up.output_shape()[top_in].channels
        else:
            raise ValueError(
                f"MODEL.FCOS.TOP_BLOCK_IN_FEATURE must be 'p5' or a ResNet output "
                f"({sorted(bottom_up.output_shape())}), got {top_in!r}"
            )
        top_block = LastLevelP6P7(top_in_channels, out_channels, in_feature=top_in)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
