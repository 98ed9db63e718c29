"""
Deformable convolution (DCNv1, Dai et al. 2017; DCNv2, Zhu et al. 2019) on both Detectron2
routes.

Detectron2's ``DeformConv`` / ``ModulatedDeformConv`` need its compiled CUDA ops (absent on
the PyPI route of Detectron2 0.6, and on every CPU for the backward pass and for DCNv2).
:class:`DeformConvFallback` and :class:`ModulatedDeformConvFallback` are the same modules
(same parameters, state dict and offset layout) that compute with
``torchvision.ops.deform_conv2d`` wherever Detectron2's op cannot run
(:func:`fcos_d2.compat.d2_deform_conv_usable`). Both libraries read the offsets as
(dy, dx) pairs per kernel tap, tap-major, and DCNv2's modulation mask as given (Detectron2's
blocks and AdelaiDet's ``DFConv2d`` apply the sigmoid before the call), so outputs and
checkpoints are interchangeable.

torchvision's CPU kernel has no bfloat16 (nor float16) version: under reduced-precision
inference or training these layers run in float32.
"""

from typing import List, Optional, Tuple

import torch
from detectron2.layers import Conv2d, DeformConv, ModulatedDeformConv
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from .. import compat
from .fusion import derive_module, replace_modules

__all__ = [
    "DeformConvFallback",
    "DeformableConv2d",
    "ModulatedDeformConvFallback",
    "deform_conv",
    "use_deform_conv_fallback",
]


def _full_precision(*tensors: Optional[Tensor]) -> List[Optional[Tensor]]:
    """The tensors in float32 unless they are float32 or float64 already (None stays)."""
    out = []
    for t in tensors:
        if t is not None and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        out.append(t)
    return out


def deform_conv(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
) -> Tensor:
    """
    Deformable convolution with torchvision, in float32 (or float64) whatever the autocast
    state.

    Args:
        x: (N, C_in, H, W).
        offset: (N, 2 * G * kh * kw, H_out, W_out): per deformable group g and tap k, the
            (dy, dx) displacement at channels 2 * (g * kh * kw + k) + (0, 1).
        weight: (C_out, C_in // groups, kh, kw); ``groups`` follows from the shapes.
        bias: (C_out,) or None.
        mask: None (DCNv1) or (N, G * kh * kw, H_out, W_out) modulation scalars (DCNv2).

    Returns:
        (N, C_out, H_out, W_out), float32 for reduced-precision inputs.
    """
    dtype = torch.promote_types(x.dtype, weight.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    x, offset, weight, bias, mask = (
        None if t is None else t.to(dtype) for t in (x, offset, weight, bias, mask)
    )
    with torch.autocast(x.device.type, enabled=False):
        return deform_conv2d(
            x,
            offset,
            weight,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            mask=mask,
        )


class DeformConvFallback(DeformConv):
    """
    Detectron2's ``DeformConv`` (DCNv1), computed by torchvision where Detectron2's compiled
    op cannot run. Same constructor, parameters and ``forward(x, offset)``.
    """

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        if x.numel() == 0 or compat.d2_deform_conv_usable(x):
            x, offset = _full_precision(x, offset)
            return super().forward(x, offset)
        x = deform_conv(
            x, offset, self.weight, None, None, self.stride, self.padding, self.dilation
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ModulatedDeformConvFallback(ModulatedDeformConv):
    """
    Detectron2's ``ModulatedDeformConv`` (DCNv2), computed by torchvision where Detectron2's
    compiled op cannot run. Same constructor, parameters and ``forward(x, offset, mask)``.
    """

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        if x.numel() == 0 or compat.d2_deform_conv_usable(x):
            x, offset, mask = _full_precision(x, offset, mask)
            return super().forward(x, offset, mask)
        x = deform_conv(
            x, offset, self.weight, self.bias, mask, self.stride, self.padding, self.dilation
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def use_deform_conv_fallback(module: nn.Module) -> int:
    """
    Replace every Detectron2 ``DeformConv`` / ``ModulatedDeformConv`` inside ``module`` by its
    fallback (a new module with the same parameters; in place). Returns how many.
    """
    fallbacks = {DeformConv: DeformConvFallback, ModulatedDeformConv: ModulatedDeformConvFallback}

    def fn(m: nn.Module) -> Optional[nn.Module]:
        cls = fallbacks.get(type(m))
        return derive_module(cls, m) if cls is not None else None

    return replace_modules(module, fn)


class DeformableConv2d(nn.Module):
    """
    A 3x3 DCNv2 layer for the head towers (AdelaiDet's ``DFConv2d`` with its defaults, under
    the same parameter names): ``offset``, a convolution giving 2 * 9 offsets and 9 mask
    logits per output location, and ``conv``, the modulated deformable convolution (with
    bias) whose taps move by those offsets and are scaled by sigmoid(mask logits).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        taps = kernel_size * kernel_size
        padding = kernel_size // 2
        self.offset = Conv2d(in_channels, 3 * taps, kernel_size, padding=padding)
        self.conv = ModulatedDeformConvFallback(
            in_channels, out_channels, kernel_size, padding=padding, bias=True
        )
        self.split = 2 * taps
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def offsets_and_mask(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, 18, H, W) offsets and (N, 9, H, W) mask (after the sigmoid) for input x."""
        out = self.offset(x)
        return out[:, : self.split], out[:, self.split :].sigmoid()

    def forward(
        self, x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            x: (N, C_in, H, W).
            weight, bias: use these instead of ``conv``'s (e.g. with a norm folded in).
        """
        offset, mask = self.offsets_and_mask(x)
        if weight is None:
            return self.conv(x, offset, mask)
        return deform_conv(x, offset, weight, bias, mask, 1, self.conv.padding, 1)
