"""
Speed-ups that keep the model's parameters, state dict and (up to float rounding) outputs:
FrozenBatchNorm folded into the preceding convolution, the head's BatchNorm folded into its
convolutions at inference, channels-last memory format, and reduced-precision inference.
"""

from typing import Dict, Optional, Tuple

import torch
from detectron2.layers import Conv2d, CycleBatchNormList, FrozenBatchNorm2d
from torch import Tensor, nn
from torch.nn import functional as F

from .deform import DeformableConv2d

__all__ = [
    "FrozenBNFoldedConv2d",
    "fold_frozen_batchnorm",
    "freeze_folded_convs",
    "precision_dtype",
    "run_tower_bn_folded",
]


class FrozenBNFoldedConv2d(Conv2d):
    """
    Detectron2's ``Conv2d`` whose ``norm`` is a FrozenBatchNorm2d, computed as one
    convolution with the norm folded into its weights: conv(x, w * s) + (b - m * s), with
    s = gamma / sqrt(var + eps). The same parameters, buffers and state dict as the
    original; gradients reach ``weight`` through the (cheap) per-forward fold. Without
    autograd the folded weights are cached until a parameter or buffer changes.
    """

    _fold_cache: Optional[Tuple[tuple, Tensor, Tensor]] = None

    def _versions(self) -> tuple:
        norm = self.norm
        tensors = [self.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
        if self.bias is not None:
            tensors.append(self.bias)
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def _folded(self) -> Tuple[Tensor, Tensor]:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            weight, bias = self._folded()
            self._fold_cache = None
        else:
            key = self._versions()
            cache = self._fold_cache
            if cache is None or cache[0] != key:
                with torch.no_grad():
                    cache = (key, *self._folded())
                self._fold_cache = cache
            weight, bias = cache[1], cache[2]
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """
    Turn every Detectron2 ``Conv2d`` followed by a FrozenBatchNorm2d inside ``module`` into
    a :class:`FrozenBNFoldedConv2d` (in place, same parameters). Returns how many.
    """
    count = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FrozenBNFoldedConv2d
            count += 1
    return count


def freeze_folded_convs(module: nn.Module) -> int:
    """
    Turn every :class:`FrozenBNFoldedConv2d` inside ``module`` into a plain Detectron2
    ``Conv2d`` whose weight and bias are the folded ones (in place; the state dict changes:
    the norms' buffers are gone). For export, where the fold's cache cannot be traced.
    Returns how many.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, FrozenBNFoldedConv2d):
            with torch.no_grad():
                weight, bias = m._folded()
            m.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            m.norm = None
            m.__class__ = Conv2d
            count += 1
    return count


def _level_fold(conv: nn.Module, norm: CycleBatchNormList, level: int) -> Tuple[Tensor, Tensor]:
    """Weight and bias of ``conv`` followed by ``norm``'s BatchNorm of ``level`` in eval mode."""
    bn = norm[level]
    scale = (bn.running_var + bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if norm._affine:  # shared affine parameters after the per-level statistics
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    inner = conv.conv if isinstance(conv, DeformableConv2d) else conv
    weight = inner.weight * scale.reshape(-1, 1, 1, 1)
    bias = shift if inner.bias is None else inner.bias * scale + shift
    return weight, bias


def _fold_key(conv: nn.Module, norm: CycleBatchNormList, level: int) -> tuple:
    bn = norm[level]
    tensors = [t for t in conv.parameters(recurse=True)] + [bn.running_mean, bn.running_var]
    tensors += list(norm.parameters(recurse=False))
    return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


def run_tower_bn_folded(
    tower: nn.Sequential, x: Tensor, level: int, cache: Dict[tuple, tuple]
) -> Tensor:
    """
    Inference forward of a head tower on one level's features, with every convolution
    (``nn.Conv2d`` or :class:`DeformableConv2d`) followed by a ``CycleBatchNormList``
    computed as one convolution: the level's BatchNorm (running statistics) and the shared
    affine folded into its weight and bias. Other layers run as they are. Folded weights
    are kept in ``cache`` until a parameter or statistic changes. The norms' cycling
    position is not touched.
    """
    layers = list(tower)
    i = 0
    while i < len(layers):
        layer, norm = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(norm, CycleBatchNormList) and isinstance(
            layer, (nn.Conv2d, DeformableConv2d)
        ):
            if torch.compiler.is_exporting():  # no cache (data_ptr) in a traced graph
                weight, bias = _level_fold(layer, norm, level)
            else:
                key = (id(layer), level)
                version = _fold_key(layer, norm, level)
                if key not in cache or cache[key][0] != version:
                    with torch.no_grad():
                        cache[key] = (version, *_level_fold(layer, norm, level))
                weight, bias = cache[key][1], cache[key][2]
            if isinstance(layer, DeformableConv2d):
                x = layer(x, weight, bias)
            else:
                x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation,
                             layer.groups)  # fmt: skip
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


def precision_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a precision name ("", "bf16", "fp16") on device (None: fp32)."""
    if name in ("", "fp32", "float32"):
        return None
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    if name in ("fp16", "float16", "half"):
        if torch.device(device).type == "cpu":
            raise ValueError("MODEL.FCOS.INFERENCE_PRECISION fp16 needs a GPU; use bf16 on the CPU")
        return torch.float16
    raise ValueError(f"MODEL.FCOS.INFERENCE_PRECISION must be '', 'bf16' or 'fp16', got {name!r}")
