"""
Norms fused into convolutions, as an explicit step.

- :class:`FrozenBNConv2d`: a Detectron2 ``Conv2d`` followed by a ``FrozenBatchNorm2d``
  computed as one convolution, conv(x, w * s) + (b - m * s) with s = gamma / sqrt(var + eps).
  In training (and wherever gradients reach the weight) the fold is recomputed in every
  forward, which is differentiable and cheaper than the separate norm; at inference it uses
  the folded weights that :meth:`FrozenBNConv2d.fuse` stored.
- :func:`fused_tower_weights`: the weights and biases of a head tower's convolutions with each
  level's BatchNorm (running statistics, shared affine) folded in, for FCOSHead's
  ``fuse``.

Fusing is a step the model takes (``FCOS.fuse``, which FCOS runs before every inference
forward), not a cache: the fused tensors are non-persistent buffers (they move with
``.to()``, stay out of the state dict) that ``unfuse`` drops, and every fusable module drops
them when it returns to training mode (``train()``) or loads a state dict. Code that changes
weights in place in eval mode must call ``unfuse()`` (or ``train()``) afterwards.

The modules are built by :func:`fold_frozen_batchnorm` and :func:`to_plain_convs`, which
replace submodules by new ones carrying the same parameters (no module changes its class).
"""

from typing import Callable, List, Optional, Tuple, Type, TypeVar

import torch
from detectron2.layers import Conv2d, CycleBatchNormList, FrozenBatchNorm2d
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "FrozenBNConv2d",
    "derive_module",
    "fold_frozen_batchnorm",
    "fused_tower_weights",
    "replace_modules",
    "to_plain_convs",
]

M = TypeVar("M", bound=nn.Module)


def derive_module(cls: Type[M], module: nn.Module) -> M:
    """
    A new module of class ``cls`` (``module``'s class or a class related to it) with
    ``module``'s settings, parameters, buffers and submodules (shared, not copied). ``module``
    itself is left as it is.
    """
    new = cls.__new__(cls)
    # Own containers (parameters, buffers, submodules, hooks), the same tensors and modules.
    new.__dict__.update(
        {k: type(v)(v) if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()}
    )
    return new


def replace_modules(root: nn.Module, fn: Callable[[nn.Module], Optional[nn.Module]]) -> int:
    """
    Replace, in place, every submodule ``m`` of ``root`` for which ``fn(m)`` returns a module
    by that module (a parent's own replacement is seen before its children). Returns how
    many were replaced.
    """
    count = 0
    for name, child in list(root.named_children()):
        new = fn(child)
        if new is not None:
            setattr(root, name, new)
            count += 1
            child = new
        count += replace_modules(child, fn)
    return count


def _fold(weight: Tensor, bias: Optional[Tensor], norm: FrozenBatchNorm2d) -> Tuple[Tensor, Tensor]:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    folded_weight = weight * scale.reshape(-1, 1, 1, 1)
    folded_bias = shift if bias is None else bias * scale + shift
    return folded_weight, folded_bias


class FrozenBNConv2d(Conv2d):
    """
    Detectron2's ``Conv2d`` whose ``norm`` is a FrozenBatchNorm2d, computed as one
    convolution. The same parameters, buffers and state dict as the ``Conv2d`` it is made from
    (:func:`fold_frozen_batchnorm`); outputs equal up to float rounding.
    """

    fused_weight: Optional[Tensor]
    fused_bias: Optional[Tensor]

    @classmethod
    def from_conv(cls, conv: Conv2d) -> "FrozenBNConv2d":
        """The module computing ``conv`` (a Conv2d with a FrozenBatchNorm2d norm) as one conv."""
        if not isinstance(conv.norm, FrozenBatchNorm2d):
            raise TypeError(f"FrozenBNConv2d needs a FrozenBatchNorm2d norm, got {conv.norm}")
        new = derive_module(cls, conv)
        new.register_buffer("fused_weight", None, persistent=False)
        new.register_buffer("fused_bias", None, persistent=False)
        new.register_load_state_dict_post_hook(lambda module, _: module.unfuse())
        return new

    def folded(self) -> Tuple[Tensor, Tensor]:
        """The weight and bias with the norm folded in (differentiable)."""
        return _fold(self.weight, self.bias, self.norm)

    @torch.no_grad()
    def fuse(self) -> None:
        """Store the folded weight and bias for inference (nothing to do if stored)."""
        if self.fused_weight is None:
            self.fused_weight, self.fused_bias = (t.detach() for t in self.folded())

    def unfuse(self) -> None:
        self.fused_weight = self.fused_bias = None

    def train(self, mode: bool = True) -> "FrozenBNConv2d":
        if mode:
            self.unfuse()
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        gradients = torch.is_grad_enabled() and self.weight.requires_grad
        if self.fused_weight is not None and not gradients:
            weight, bias = self.fused_weight, self.fused_bias
        else:
            weight, bias = self.folded()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """
    Replace every Detectron2 ``Conv2d`` followed by a FrozenBatchNorm2d inside ``module`` by a
    :class:`FrozenBNConv2d` with the same parameters (in place). Returns how many.
    """

    def fn(m: nn.Module) -> Optional[nn.Module]:
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            return FrozenBNConv2d.from_conv(m)
        return None

    return replace_modules(module, fn)


def to_plain_convs(module: nn.Module) -> int:
    """
    Replace every :class:`FrozenBNConv2d` inside ``module`` by a plain Detectron2 ``Conv2d``
    whose weight and bias are the folded ones and which has no norm (in place; the state dict
    loses the norms' buffers). For export, whose graph needs plain convolutions. Returns how
    many.
    """

    def fn(m: nn.Module) -> Optional[nn.Module]:
        if not isinstance(m, FrozenBNConv2d):
            return None
        with torch.no_grad():
            weight, bias = m.folded()
        plain = derive_module(Conv2d, m)
        for name in ("fused_weight", "fused_bias"):
            plain._buffers.pop(name, None)
            plain._non_persistent_buffers_set.discard(name)
        plain._load_state_dict_post_hooks.clear()  # FrozenBNConv2d's unfuse hook
        plain.norm = None
        plain.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        plain.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return plain

    return replace_modules(module, fn)


def fused_tower_weights(tower: nn.Sequential, level: int) -> List[Optional[Tuple[Tensor, Tensor]]]:
    """
    For each layer of a head tower: for a convolution (``nn.Conv2d``, or a DCNv2 layer with
    its convolution in ``.conv``) followed by a ``CycleBatchNormList``, the (weight, bias) of
    the convolution with the norm's BatchNorm of ``level`` in eval mode (running statistics)
    and the shared affine folded in; None for every other layer (the norm included).
    """
    layers = list(tower)
    out: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(layers)
    for i, (layer, norm) in enumerate(zip(layers, layers[1:])):
        if not isinstance(norm, CycleBatchNormList):
            continue
        if isinstance(layer, nn.Conv2d):
            inner = layer
        elif isinstance(getattr(layer, "conv", None), nn.Module):
            inner = layer.conv  # DeformableConv2d: its modulated deformable convolution
        else:
            continue
        bn = norm[level]
        scale = (bn.running_var + bn.eps).rsqrt()
        shift = -bn.running_mean * scale
        if norm._affine:  # shared affine parameters after the per-level statistics
            scale = scale * norm.weight
            shift = shift * norm.weight + norm.bias
        weight = inner.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if inner.bias is None else inner.bias * scale + shift
        out[i] = (weight.detach(), bias.detach())
    return out
