"""The FCOS head: classification and regression towers shared by all levels."""

import math
from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import CycleBatchNormList, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

from .deform import DeformableConv2d
from .fusion import fused_tower_weights

__all__ = ["FCOS_HEAD_REGISTRY", "FCOSHead", "Scale", "build_fcos_head"]

FCOS_HEAD_REGISTRY = Registry("FCOS_HEAD")
FCOS_HEAD_REGISTRY.__doc__ = """
Registry for FCOS heads. The registered object is called with ``(cfg, input_shape)``
through ``@configurable``, where input_shape is the list of ``ShapeSpec`` of the
head's input levels, and must return the same outputs as :class:`FCOSHead`.
"""


class Scale(nn.Module):
    """A learnable scalar multiplier (a parameter of shape (1,), as in FCOS and AdelaiDet)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower_norm(norm: str, channels: int, num_levels: int) -> nn.Module:
    if norm in ("BN", "SyncBN"):
        # Statistics differ between levels: one BatchNorm per level, shared affine.
        bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
        return CycleBatchNormList(length=num_levels, bn_class=bn_class, num_features=channels)
    return get_norm(norm, channels)


@FCOS_HEAD_REGISTRY.register()
class FCOSHead(nn.Module):
    """
    Two towers of ``num_convs`` 3x3 convs (+ norm + ReLU), shared across levels, then
    class logits (C), box distances (4) and centerness (1) per location.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        norm_reg_targets: bool = False,
        centerness_on_reg: bool = False,
        use_deformable: bool = False,
        fold_bn: bool = True,
    ):
        """
        Args:
            input_shape: ShapeSpec of each input level (same channels; strides used by
                ``norm_reg_targets``).
            num_classes: number of foreground classes C.
            num_convs: convs per tower.
            norm: "GN", "BN", "SyncBN" or "" (see config.py).
            prior_prob: initial foreground probability of the class logits.
            use_scale: learnable scalar per level on the box outputs.
            norm_reg_targets: distances as ReLU(s_i x) * stride instead of exp(s_i x).
            centerness_on_reg: centerness from the regression tower instead of the
                classification tower.
            use_deformable: the last conv of each tower is a DCNv2 layer
                (:class:`DeformableConv2d`), as AdelaiDet's USE_DEFORMABLE.
            fold_bn: with a "BN"/"SyncBN" norm, :meth:`fuse` folds each level's statistics
                into the tower convs, so that inference computes conv + norm as one
                convolution.
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOSHead needs equal channels on all levels, got {channels}")
        in_channels = channels.pop()
        self.num_classes = num_classes
        self.strides = [int(s.stride) for s in input_shape]
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg
        self.fold_bn = fold_bn and norm in ("BN", "SyncBN")
        self.fused = False
        num_levels = len(input_shape)

        def tower() -> nn.Sequential:
            layers: List[nn.Module] = []
            for i in range(num_convs):
                if use_deformable and i == num_convs - 1:
                    layers.append(DeformableConv2d(in_channels, in_channels))
                else:
                    layers.append(nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1))
                norm_layer = _tower_norm(norm, in_channels, num_levels)
                if norm_layer is not None:
                    layers.append(norm_layer)
                layers.append(nn.ReLU())
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.bbox_tower = tower()
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, stride=1, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.register_load_state_dict_post_hook(lambda module, _: module.unfuse())

    @torch.no_grad()
    def fuse(self) -> None:
        """
        With ``fold_bn``: store, for every level, each tower conv's weight and bias with the
        level's BatchNorm (running statistics) folded in, for inference; the eval-mode
        forward then runs each conv + norm as one convolution. Without it, nothing.
        """
        if not self.fold_bn or self.fused:
            return
        for tower_name in ("cls_tower", "bbox_tower"):
            tower = getattr(self, tower_name)
            for level in range(len(self.strides)):
                for i, wb in enumerate(fused_tower_weights(tower, level)):
                    if wb is not None:
                        for suffix, t in zip(("w", "b"), wb):
                            name = f"fused_{tower_name}_{i}_{level}_{suffix}"
                            self.register_buffer(name, t, persistent=False)
        self.fused = True

    def unfuse(self) -> None:
        """Drop what :meth:`fuse` stored."""
        for name in [n for n in self._buffers if n.startswith("fused_")]:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        self.fused = False

    def train(self, mode: bool = True) -> "FCOSHead":
        if mode:
            self.unfuse()
        return super().train(mode)

    def _tower(self, name: str, x: Tensor, level: int) -> Tensor:
        """A tower on one level's features: as built, or (fused, eval mode) with each
        conv + norm as one convolution; the norms' cycling position is then not touched."""
        tower = getattr(self, name)
        if not (self.fused and not self.training):
            return tower(x)
        layers = list(tower)
        i = 0
        while i < len(layers):
            layer = layers[i]
            weight = self._buffers.get(f"fused_{name}_{i}_{level}_w")
            if weight is None:
                x = layer(x)
                i += 1
                continue
            bias = self._buffers[f"fused_{name}_{i}_{level}_b"]
            if isinstance(layer, DeformableConv2d):
                x = layer(x, weight, bias)
            else:
                x = F.conv2d(
                    x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups
                )
            i += 2  # the norm is folded in
        return x

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "num_convs": cfg.MODEL.FCOS.NUM_CONVS,
            "norm": cfg.MODEL.FCOS.NORM,
            "prior_prob": cfg.MODEL.FCOS.PRIOR_PROB,
            "use_scale": cfg.MODEL.FCOS.USE_SCALE,
            "norm_reg_targets": cfg.MODEL.FCOS.NORM_REG_TARGETS,
            "centerness_on_reg": cfg.MODEL.FCOS.CENTERNESS_ON_REG,
            "use_deformable": cfg.MODEL.FCOS.USE_DEFORMABLE,
            "fold_bn": cfg.MODEL.FCOS.FOLD_FROZEN_BN,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features: per level (N, in_channels, H_i, W_i), in the order of ``input_shape``.

        Returns:
            logits: per level (N, C, H_i, W_i) class logits.
            box_reg: per level (N, 4, H_i, W_i) predicted (l, t, r, b) distances in
                pixels of the input image, float32.
            centerness: per level (N, 1, H_i, W_i) centerness logits.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"FCOSHead expects {len(self.strides)} levels, got {len(features)}")
        logits, box_reg, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feat = self._tower("cls_tower", feature, level)
            reg_feat = self._tower("bbox_tower", feature, level)
            logits.append(self.cls_logits(cls_feat))
            centerness.append(self.centerness(reg_feat if self.centerness_on_reg else cls_feat))
            reg = self.bbox_pred(reg_feat).float()
            if self.scales is not None:
                reg = self.scales[level](reg)
            if self.norm_reg_targets:
                reg = F.relu(reg) * self.strides[level]
            else:
                reg = torch.exp(reg)
            box_reg.append(reg)
        return logits, box_reg, centerness


def build_fcos_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the head named by ``cfg.MODEL.FCOS.HEAD_NAME``."""
    return FCOS_HEAD_REGISTRY.get(cfg.MODEL.FCOS.HEAD_NAME)(cfg, input_shape)
