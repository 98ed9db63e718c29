"""Fusion: norms folded into convolutions keep parameters, state dict and (up to rounding)
outputs, as an explicit step that training, weight loading and export respect."""

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model

from fcos_d2.modeling.fusion import FrozenBNConv2d, fold_frozen_batchnorm, to_plain_convs
from helpers import small_fcos_cfg


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
    root = torch.nn.Sequential(conv)
    assert fold_frozen_batchnorm(root) == 1
    folded = root[0]
    assert type(folded) is FrozenBNConv2d and type(conv) is Conv2d  # a new module
    assert folded.weight is conv.weight and folded.norm is conv.norm  # same parameters
    out = folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.autograd.grad(out.square().sum(), [x, folded.weight])
    for a, b in zip(grad, ref_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert folded.state_dict().keys() == state.keys()


def test_fuse_is_explicit_and_undone_by_training_and_loading():
    torch.manual_seed(0)
    root = torch.nn.Sequential(Conv2d(4, 6, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(6)))
    fold_frozen_batchnorm(root)
    conv = root[0]
    _randomise_frozen_bn(conv)
    x = torch.randn(1, 4, 7, 9)
    conv.eval()
    with torch.no_grad():
        before = conv(x)
        conv.fuse()
        assert conv.fused_weight is not None and "fused_weight" not in conv.state_dict()
        torch.testing.assert_close(conv(x), before)
        # In eval mode an in-place change is not seen until unfuse() (documented) ...
        conv.norm.running_var.mul_(4.0)
        stale = conv(x)
        conv.unfuse()
        changed = conv(x)
    torch.testing.assert_close(stale, before)
    assert not torch.allclose(changed, before)
    # ... and train() and load_state_dict() drop the fused weights.
    conv.fuse()
    conv.train()
    assert conv.fused_weight is None
    conv.eval().fuse()
    conv.load_state_dict({k: v * 1.5 for k, v in conv.state_dict().items()})
    assert conv.fused_weight is None
    # For export: a plain Conv2d with the folded weights and no norm, same outputs.
    with torch.no_grad():
        want = conv(x)
    assert to_plain_convs(root) == 1
    plain = root[0]
    assert type(plain) is Conv2d and plain.norm is None
    assert "norm.running_var" not in plain.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-5)


def test_training_after_an_evaluation_uses_the_new_weights():
    """An evaluation fuses; training then changes the weights; the next evaluation must see
    the new weights (FrozenBatchNorm backbone and a BatchNorm head, i.e. FCOS-RT's)."""
    cfg = small_fcos_cfg()
    cfg.MODEL.FCOS.NORM = "BN"
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    from helpers import ddp_batch

    batch = ddp_batch(2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)

    def evaluate():
        model.eval()
        with torch.no_grad():
            return model([{"image": b["image"]} for b in batch])[0]["instances"].scores

    first = evaluate()
    assert model.head.fused and any(
        m.fused_weight is not None for m in model.modules() if isinstance(m, FrozenBNConv2d)
    )
    model.train()
    assert not model.head.fused
    sum(model(batch).values()).backward()
    opt.step()
    second = evaluate()
    # Reference: a fresh model with the trained weights, never fused before.
    torch.manual_seed(0)
    fresh = build_model(cfg)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        want = fresh([{"image": b["image"]} for b in batch])[0]["instances"].scores
    assert first.shape != second.shape or not torch.allclose(first, second)
    torch.testing.assert_close(second, want)


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
    assert any(type(m) is FrozenBNConv2d for m in fast.modules())
    assert not any(type(m) is FrozenBNConv2d for m in plain.modules())
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
