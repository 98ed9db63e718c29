"""The speed options keep the parameters, the state dict and (up to rounding) the outputs."""

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from helpers import small_fcos_cfg

from fcos_d2.modeling.fast import FrozenBNFoldedConv2d, fold_frozen_batchnorm, precision_dtype


def _randomise_frozen_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def test_folded_conv_equals_conv_then_frozen_bn():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(16))
    _randomise_frozen_bn(conv)
    x = torch.randn(2, 8, 10, 12, requires_grad=True)
    ref = conv(x)
    ref_grad = torch.autograd.grad(ref.square().sum(), [x, conv.weight])
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    assert fold_frozen_batchnorm(conv) == 1 and type(conv) is FrozenBNFoldedConv2d
    out = conv(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.autograd.grad(out.square().sum(), [x, conv.weight])
    for a, b in zip(grad, ref_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert conv.state_dict().keys() == state.keys()
    # Without autograd the folded weights are cached, and refreshed when a buffer changes.
    with torch.no_grad():
        y1 = conv(x)
        conv.norm.running_var.mul_(4.0)
        y2 = conv(x)
    torch.testing.assert_close(y1, ref.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize("train", [False, True])
def test_speed_options_keep_outputs(train):
    def model(**fcos):
        cfg = small_fcos_cfg()
        for k, v in fcos.items():
            setattr(cfg.MODEL.FCOS, k, v)
        cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
        torch.manual_seed(0)
        m = build_model(cfg)
        with torch.no_grad():
            _randomise_frozen_bn(m)
        return m.train(train)

    plain = model(FOLD_FROZEN_BN=False, CHANNELS_LAST=False)
    fast = model(FOLD_FROZEN_BN=True, CHANNELS_LAST=True)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert any(type(m) is FrozenBNFoldedConv2d for m in fast.modules())
    assert not any(type(m) is FrozenBNFoldedConv2d for m in plain.modules())
    fast.load_state_dict(plain.state_dict())
    from helpers import ddp_batch

    batch = ddp_batch(2)
    if train:
        a, b = plain(batch), fast(batch)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        return
    with torch.no_grad():
        outs = []
        for m in (plain, fast):
            images = m.preprocess_image(batch)
            feats = m.backbone(images.tensor)
            outs.append(m.head([feats[f] for f in m.head_in_features]))
    for per_level_a, per_level_b in zip(*outs):
        for x, y in zip(per_level_a, per_level_b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_precision_names():
    assert precision_dtype("", "cpu") is None
    assert precision_dtype("bf16", "cpu") is torch.bfloat16
    assert precision_dtype("fp16", "cuda") is torch.float16
    with pytest.raises(ValueError, match="needs a GPU"):
        precision_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="INFERENCE_PRECISION"):
        precision_dtype("int8", "cpu")
