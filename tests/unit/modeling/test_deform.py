"""Deformable convolution without Detectron2's compiled ops, against a reference from the papers."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import DeformConv, FrozenBatchNorm2d, ModulatedDeformConv
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

import fcos_d2
from fcos_d2 import compat
from fcos_d2.engine import FCOSCheckpointer
from fcos_d2.modeling.deform import (
    DeformableConv2d,
    DeformConvFallback,
    ModulatedDeformConvFallback,
    deform_conv,
    use_deform_conv_fallback,
)
from helpers import QUICKSTART, TINY_OPTS


def bilinear(img, y, x):
    """Bilinear sample of a 2-D list ``img`` at (y, x): zero outside the image (DCN papers:
    x(p) = sum_q G(q, p) x(q) over the integer pixels q, G = max(0, 1 - |dy|) max(0, 1 - |dx|))."""
    h, w = len(img), len(img[0])
    out = 0.0
    for qy in (math.floor(y), math.floor(y) + 1):
        for qx in (math.floor(x), math.floor(x) + 1):
            if 0 <= qy < h and 0 <= qx < w:
                out += max(0.0, 1 - abs(y - qy)) * max(0.0, 1 - abs(x - qx)) * img[qy][qx]
    return out


def reference_deform_conv(x, offset, weight, bias=None, mask=None, stride=1, pad=0, dil=1):
    """
    y(p0) = sum_k w_k * m_k * x(p0 + p_k + dp_k) (DCNv1 without m; DCNv2 with m), plain loops
    in float64. offset channel 2 * (g * K + k) is tap k's dy for deformable group g, the
    next one its dx; weights in groups as a grouped convolution.
    """
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    taps = kh * kw
    off_groups = offset.shape[1] // (2 * taps)
    ho, wo = offset.shape[2], offset.shape[3]
    X, O, W = x.tolist(), offset.tolist(), weight.tolist()
    M = mask.tolist() if mask is not None else None
    out = torch.zeros(n, c_out, ho, wo, dtype=torch.float64)
    for b in range(n):
        for o in range(c_out):
            g = o // (c_out // groups)
            for i in range(ho):
                for j in range(wo):
                    total = 0.0 if bias is None else float(bias[o])
                    for cl in range(c_per_group):
                        ci = g * c_per_group + cl
                        og = ci // (c_in // off_groups)
                        for ki in range(kh):
                            for kj in range(kw):
                                k = ki * kw + kj
                                dy = O[b][2 * (og * taps + k)][i][j]
                                dx = O[b][2 * (og * taps + k) + 1][i][j]
                                y = i * stride - pad + ki * dil + dy
                                xx = j * stride - pad + kj * dil + dx
                                v = bilinear(X[b][ci], y, xx)
                                if M is not None:
                                    v *= M[b][og * taps + k][i][j]
                                total += W[o][cl][ki][kj] * v
                    out[b, o, i, j] = total
    return out


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hand_made_offsets_sample_as_the_papers_say():
    # One channel, 1x1 kernel of weight 1: the output is the input sampled at p + dp.
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4)  # x[y][x] = 4 y + x
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    offset[0, :, 0, 0] = torch.tensor([1.0, 2.0])  # (dy, dx) = (1, 2): x[1][2] = 6
    offset[0, :, 0, 1] = torch.tensor([0.5, 0.0])  # halfway to the next row: (1 + 5) / 2
    offset[0, :, 0, 2] = torch.tensor([0.25, 0.5])  # 0.75 (0.5*2 + 0.5*3) + 0.25 (0.5*6 + 0.5*7)
    offset[0, :, 1, 0] = torch.tensor([0.0, -0.5])  # half outside: 0.5 * x[1][0] = 2
    offset[0, :, 2, 3] = torch.tensor([5.0, 0.0])  # outside the image: 0
    out = deform_conv(x, offset, weight)
    expected = x.clone()
    expected[0, 0, 0, 0], expected[0, 0, 0, 1], expected[0, 0, 0, 2] = 6.0, 3.0, 3.5
    expected[0, 0, 1, 0], expected[0, 0, 2, 3] = 2.0, 0.0
    assert torch.equal(out, expected)
    assert torch.equal(reference_deform_conv(x, offset, weight), expected)
    # DCNv2: the mask scales each tap's sample.
    mask = torch.full((1, 1, 3, 4), 0.5, dtype=torch.float64)
    assert torch.allclose(deform_conv(x, offset, weight, mask=mask), expected * 0.5)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize(
    "stride,pad,dil,groups,off_groups", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2), (1, 2, 2, 1, 2)]
)
def test_random_offsets_match_the_reference(modulated, stride, pad, dil, groups, off_groups):
    c_in, c_out = 4, 4
    x = _randn(2, c_in, 6, 7, seed=1)
    weight = _randn(c_out, c_in // groups, 3, 3, seed=2)
    bias = _randn(c_out, seed=3) if modulated else None
    ho = (6 + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (7 + 2 * pad - dil * 2 - 1) // stride + 1
    offset = _randn(2, 2 * off_groups * 9, ho, wo, seed=4) * 2  # some samples leave the image
    mask = torch.rand(2, off_groups * 9, ho, wo, dtype=torch.float64) if modulated else None
    out = deform_conv(x, offset, weight, bias, mask, stride, pad, dil)
    ref = reference_deform_conv(x, offset, weight, bias, mask, stride, pad, dil)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # The Detectron2 modules on this route compute the same (same layout).
    cls = ModulatedDeformConvFallback if modulated else DeformConvFallback
    layer = cls(
        c_in,
        c_out,
        3,
        stride=stride,
        padding=pad,
        dilation=dil,
        groups=groups,
        deformable_groups=off_groups,
        bias=modulated,
    ).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        if modulated:
            layer.bias.copy_(bias)
    got = layer(x, offset, mask) if modulated else layer(x, offset)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_zero_offsets_and_unit_mask_are_a_plain_convolution():
    x = _randn(2, 8, 9, 10, seed=5).float()
    for groups, stride, dil in [(1, 1, 1), (4, 2, 1), (2, 1, 2)]:
        weight = _randn(8, 8 // groups, 3, 3, seed=6).float()
        bias = _randn(8, seed=7).float()
        conv = F.conv2d(x, weight, bias, stride=stride, padding=dil, dilation=dil, groups=groups)
        offset = torch.zeros(2, 18, *conv.shape[-2:])
        mask = torch.ones(2, 9, *conv.shape[-2:])
        v1 = deform_conv(x, offset, weight, bias, None, stride, dil, dil)
        v2 = deform_conv(x, offset, weight, bias, mask, stride, dil, dil)
        torch.testing.assert_close(v1, conv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v2, conv, rtol=1e-5, atol=1e-5)


def test_gradients_pass_gradcheck_in_float64():
    x = _randn(1, 2, 5, 5, seed=8).requires_grad_()
    weight = _randn(3, 2, 3, 3, seed=9).requires_grad_()
    bias = _randn(3, seed=10).requires_grad_()
    # Fractional offsets away from integers (bilinear sampling has kinks at integers).
    offset = (torch.rand(1, 18, 5, 5, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    mask = torch.rand(1, 9, 5, 5, dtype=torch.float64).requires_grad_()
    layer = ModulatedDeformConvFallback(2, 3, 3, padding=1).double()

    def modulated(x, offset, mask, weight, bias):
        return deform_conv(x, offset, weight, bias, mask, 1, 1, 1)

    assert torch.autograd.gradcheck(modulated, (x, offset, mask, weight, bias))
    assert torch.autograd.gradcheck(lambda x, o, m: layer(x, o, m), (x, offset, mask))
    v1 = DeformConvFallback(2, 3, 3, padding=1).double()
    assert torch.autograd.gradcheck(lambda x, o: v1(x, o), (x, offset))


def test_reduced_precision_inputs_run_in_float32():
    x = _randn(1, 4, 6, 6, seed=11).float()
    offset = _randn(1, 18, 6, 6, seed=12).float()
    mask = torch.rand(1, 9, 6, 6)
    layer = ModulatedDeformConvFallback(4, 4, 3, padding=1)
    expected = layer(x.bfloat16().float(), offset.bfloat16().float(), mask.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16(), offset.bfloat16(), mask.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_detectron2_modules_are_swapped_in_place():
    block = torch.nn.Sequential(DeformConv(4, 4, 3, padding=1), ModulatedDeformConv(4, 4, 3))
    keys = {k: v.clone() for k, v in block.state_dict().items()}
    assert use_deform_conv_fallback(block) == 2
    assert type(block[0]) is DeformConvFallback and type(block[1]) is ModulatedDeformConvFallback
    assert all(torch.equal(keys[k], v) for k, v in block.state_dict().items())
    assert compat.d2_deform_conv_usable(torch.zeros(1)) is False  # CPU: never Detectron2's op


def _dcn_cfg(*opts):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS)
    cfg.merge_from_list(
        [
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
            "[False, True, True, True]",
            "MODEL.DEVICE",
            "cpu",
            *opts,
        ]
    )
    return cfg


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        img = torch.randint(0, 256, (3, 96, 128), generator=g).float()
        xy = torch.rand(3, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + 16 + torch.rand(3, 2, generator=g) * 30], dim=1)
        inst = Instances(
            (96, 128), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, 5, (3,), generator=g)
        )
        out.append({"image": img, "instances": inst, "height": 96, "width": 128})
    return out


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_resnet_trains_infers_and_reloads(modulated, tmp_path):
    torch.manual_seed(0)
    cfg = _dcn_cfg(
        "MODEL.RESNETS.DEFORM_MODULATED", str(modulated), "MODEL.FCOS.USE_DEFORMABLE", "True"
    )
    model = build_model(cfg)
    deform = [m for m in model.modules() if isinstance(m, (DeformConv, ModulatedDeformConv))]
    # res3 (4 blocks) + res4 (6) + res5 (3), one in each block, and one per head tower.
    assert len(deform) == 13 + 2
    assert all(type(m) in (DeformConvFallback, ModulatedDeformConvFallback) for m in deform)
    assert any(isinstance(m, DeformableConv2d) for m in model.head.cls_tower)
    offsets = [n for n, _ in model.named_parameters() if "conv2_offset" in n]
    assert len(offsets) == 2 * 13  # weight and bias
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(2):
        losses = model(_batch())
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
    # Gradients reached the deformable layers' weights and their offset convolutions.
    names = [
        "backbone.bottom_up.res3.0.conv2.weight",
        "head.cls_tower.0.conv.weight",
        "backbone.bottom_up.res4.2.conv2_offset.weight",
        "head.bbox_tower.0.offset.weight",
    ]
    for name in names:
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name
    model.eval()
    with torch.no_grad():
        out = model(_batch(1))
    assert len(out) == 2 and out[0]["instances"].pred_boxes.tensor.shape[1] == 4
    # A checkpoint saved with the fallback loads strictly into the same config.
    FCOSCheckpointer(model, str(tmp_path)).save("dcn")
    fresh = build_model(cfg)
    FCOSCheckpointer(fresh, strict=True).load(str(tmp_path / "dcn.pth"))
    fresh.eval()
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        again = fresh(_batch(1))
    assert torch.equal(out[0]["instances"].scores, again[0]["instances"].scores)


def test_frozen_deformable_blocks_are_not_folded():
    # A deformable conv keeps its FrozenBatchNorm as a separate norm (only plain convs fold).
    cfg = _dcn_cfg("MODEL.RESNETS.NORM", "FrozenBN")
    model = build_model(cfg)
    conv2 = model.backbone.bottom_up.res3[0].conv2
    assert type(conv2) is DeformConvFallback and isinstance(conv2.norm, FrozenBatchNorm2d)
