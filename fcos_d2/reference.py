"""
torchvision's FCOS as a reference: the same architecture built by torchvision, with seeded
weights that produce detections, and its fcos-d2 twin (configs/compat/FCOS_R50_torchvision.yaml
with converted weights). Used by the parity tests and tools/benchmark.py.
"""

import os
from typing import Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from torch import nn

from .config import add_fcos_config
from .convert import convert_state_dict

__all__ = ["TORCHVISION_CONFIG", "fcos_d2_twin", "seeded_torchvision_fcos", "torchvision_fcos"]

TORCHVISION_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "compat",
    "FCOS_R50_torchvision.yaml",
)


def torchvision_fcos(num_classes: int = 91, frozen_bn: bool = True, **kwargs) -> nn.Module:
    """
    torchvision's ``fcos_resnet50_fpn`` without downloaded weights. With ``frozen_bn`` its
    ResNet uses FrozenBatchNorm2d and trains layer2-4 only, as it does when built with
    pretrained weights (``weights=None`` alone gives trainable BatchNorm2d everywhere).
    ``kwargs`` go to ``FCOS`` (e.g. min_size, max_size, score_thresh).
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import FCOS, fcos_resnet50_fpn
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    if not frozen_bn:
        return fcos_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(
        body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    return FCOS(backbone, num_classes, **kwargs)


def seeded_torchvision_fcos(seed: int = 0, num_classes: int = 91, **kwargs) -> nn.Module:
    """
    :func:`torchvision_fcos` with seeded random weights that make it detect things:
    every norm is a non-trivial affine map, class biases are raised (sqrt(cls * ctr)
    passes torchvision's 0.2 threshold at many locations) and box outputs stay away from
    ReLU's zero.
    """
    torch.manual_seed(seed)
    model = torchvision_fcos(num_classes, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.backbone.body.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                c = module.running_var.numel()
                module.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(c, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
        head = model.head
        bias = torch.randn(num_classes, generator=g) * 0.5 - 1.0
        head.classification_head.cls_logits.bias.copy_(bias)
        head.classification_head.cls_logits.weight.mul_(5.0)
        head.regression_head.bbox_reg.bias.fill_(2.0)
        head.regression_head.bbox_reg.weight.mul_(5.0)
    return model


def fcos_d2_twin(tv_model: nn.Module, *opts: str, device: str = "cpu") -> Tuple[nn.Module, CfgNode]:
    """
    The fcos-d2 model of configs/compat/FCOS_R50_torchvision.yaml (plus config ``opts``)
    with ``tv_model``'s weights converted and loaded strictly, and its config.
    """
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(TORCHVISION_CONFIG)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    num_classes = tv_model.head.classification_head.num_classes
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    model = build_model(cfg)
    converted = convert_state_dict(tv_model.state_dict(), "torchvision", coco_80=False)
    model.load_state_dict(converted.state_dict, strict=True)
    return model, cfg
