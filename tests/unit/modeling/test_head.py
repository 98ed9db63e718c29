"""FCOSHead: output shapes, initialisation, box parameterisation, norms and gradient flow."""

import math

import pytest
import torch
from detectron2.layers import CycleBatchNormList, ShapeSpec
from torch import nn

from fcos_d2.modeling.head import FCOSHead

CHANNELS = 32  # GroupNorm(32, C) needs C divisible by 32
STRIDES = (8, 16, 32)
SIZES = ((8, 10), (4, 5), (2, 3))


def make_head(**kwargs):
    args = dict(
        input_shape=[ShapeSpec(channels=CHANNELS, stride=s) for s in STRIDES],
        num_classes=3,
        num_convs=2,
    )
    args.update(kwargs)
    return FCOSHead(**args)


def make_features(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CHANNELS, h, w, generator=g) for h, w in SIZES]


def convs(tower):
    return [m for m in tower if isinstance(m, nn.Conv2d)]


def test_output_shapes_per_level():
    torch.manual_seed(0)
    head = make_head(num_classes=5)
    logits, box_reg, centerness = head(make_features(batch=2))
    assert len(logits) == len(box_reg) == len(centerness) == len(STRIDES)
    for (h, w), lg, br, ct in zip(SIZES, logits, box_reg, centerness):
        assert lg.shape == (2, 5, h, w)
        assert br.shape == (2, 4, h, w)
        assert br.dtype == torch.float32
        assert ct.shape == (2, 1, h, w)
        # exp parameterisation: distances are positive
        assert (br > 0).all()


def test_wrong_number_of_levels_is_rejected():
    head = make_head()
    with pytest.raises(ValueError, match="levels"):
        head(make_features()[:2])


def test_unequal_channels_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        FCOSHead(
            input_shape=[ShapeSpec(channels=32, stride=8), ShapeSpec(channels=64, stride=16)],
            num_classes=2,
        )


@pytest.mark.parametrize("prior_prob", [0.01, 0.2])
def test_class_bias_init_gives_prior_probability(prior_prob):
    torch.manual_seed(0)
    head = make_head(prior_prob=prior_prob)
    expected_bias = -math.log((1 - prior_prob) / prior_prob)
    torch.testing.assert_close(
        head.cls_logits.bias, torch.full((3,), expected_bias), rtol=1e-6, atol=1e-6
    )
    # The other heads' biases start at zero.
    assert (head.bbox_pred.bias == 0).all() and (head.centerness.bias == 0).all()
    # Tower outputs ~0 (zero weights): every initial class probability is the prior.
    with torch.no_grad():
        for conv in convs(head.cls_tower):
            conv.weight.zero_()
    logits, _, _ = head(make_features())
    for lg in logits:
        torch.testing.assert_close(
            lg.sigmoid(), torch.full_like(lg, prior_prob), rtol=1e-5, atol=1e-6
        )


def _set_box_branch(head, bias, scales):
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.copy_(torch.tensor(bias))
        if scales is not None:
            for module, s in zip(head.scales, scales):
                module.scale.fill_(s)


BIAS = [0.5, -0.3, 1.25, 0.0]
SCALES = [1.0, 0.5, 2.0]


def _expected(bias, scale, stride, norm_reg_targets):
    x = torch.tensor(bias, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)
    if norm_reg_targets:
        return torch.clamp(x, min=0) * stride
    return torch.exp(x)


@pytest.mark.parametrize("norm_reg_targets", [False, True])
def test_box_parameterisation_with_scales(norm_reg_targets):
    torch.manual_seed(0)
    head = make_head(norm_reg_targets=norm_reg_targets)
    assert len(head.scales) == len(STRIDES)
    # Scales start at 1.
    for module in head.scales:
        assert module.scale.shape == (1,) and module.scale.item() == 1.0
    _set_box_branch(head, BIAS, SCALES)
    _, box_reg, _ = head(make_features())
    for level, (br, s, stride) in enumerate(zip(box_reg, SCALES, STRIDES)):
        expected = _expected(BIAS, s, stride, norm_reg_targets)
        torch.testing.assert_close(
            br, expected.view(1, 4, 1, 1).expand_as(br), msg=f"level {level}"
        )


@pytest.mark.parametrize("norm_reg_targets", [False, True])
def test_box_parameterisation_without_scales(norm_reg_targets):
    torch.manual_seed(0)
    head = make_head(norm_reg_targets=norm_reg_targets, use_scale=False)
    assert not any("scales" in name for name, _ in head.named_parameters())
    _set_box_branch(head, BIAS, None)
    _, box_reg, _ = head(make_features())
    for br, stride in zip(box_reg, STRIDES):
        expected = _expected(BIAS, 1.0, stride, norm_reg_targets)
        torch.testing.assert_close(br, expected.view(1, 4, 1, 1).expand_as(br))


@pytest.mark.parametrize("centerness_on_reg", [False, True])
def test_centerness_branch_source(centerness_on_reg):
    torch.manual_seed(0)
    head = make_head(centerness_on_reg=centerness_on_reg)
    _, _, centerness = head(make_features())
    cls_params = list(head.cls_tower.parameters())
    reg_params = list(head.bbox_tower.parameters())
    grads = torch.autograd.grad(
        sum(c.sum() for c in centerness), cls_params + reg_params, allow_unused=True
    )
    cls_grads, reg_grads = grads[: len(cls_params)], grads[len(cls_params) :]
    reached, unreached = (reg_grads, cls_grads) if centerness_on_reg else (cls_grads, reg_grads)
    assert all(g is None for g in unreached)
    assert all(g is not None for g in reached)
    assert any(g.abs().sum() > 0 for g in reached)


@pytest.mark.parametrize("norm", ["GN", "BN", "SyncBN", ""])
@pytest.mark.parametrize("num_convs", [1, 3])
def test_norm_options_build_and_train(norm, num_convs):
    torch.manual_seed(0)
    head = make_head(norm=norm, num_convs=num_convs)
    head.train()
    for tower in (head.cls_tower, head.bbox_tower):
        layers = list(tower)
        assert len(convs(tower)) == num_convs
        assert all(
            isinstance(m, (nn.Conv2d, nn.GroupNorm, CycleBatchNormList, nn.ReLU)) for m in layers
        )
        norms = [m for m in layers if not isinstance(m, (nn.Conv2d, nn.ReLU))]
        if norm == "":
            assert norms == []
            # conv, relu, conv, relu, ...
            assert len(layers) == 2 * num_convs
            continue
        assert len(norms) == num_convs
        # conv, norm, relu per block
        assert len(layers) == 3 * num_convs
        for i in range(num_convs):
            assert isinstance(layers[3 * i], nn.Conv2d)
            assert isinstance(layers[3 * i + 2], nn.ReLU)
        for n in norms:
            if norm == "GN":
                assert isinstance(n, nn.GroupNorm) and n.num_groups == 32
            else:
                bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
                # One BatchNorm per level.
                assert isinstance(n, CycleBatchNormList) and len(n) == len(STRIDES)
                assert all(type(bn) is bn_class for bn in n)

    logits, box_reg, centerness = head(make_features())
    total = sum(x.sum() for x in logits + box_reg + centerness)
    total.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    if norm in ("BN", "SyncBN"):
        # One forward in train mode: each level's BatchNorm saw exactly its own level once.
        for tower in (head.cls_tower, head.bbox_tower):
            for n in tower:
                if isinstance(n, CycleBatchNormList):
                    assert [int(bn.num_batches_tracked) for bn in n] == [1] * len(STRIDES)
                    # Levels have different statistics, so the running means differ.
                    assert not torch.allclose(n[0].running_mean, n[1].running_mean)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm_reg_targets": True, "centerness_on_reg": True},
        {"use_scale": False, "norm": ""},
    ],
)
def test_backward_reaches_every_parameter(options):
    torch.manual_seed(0)
    head = make_head(**options)
    logits, box_reg, centerness = head(make_features())
    sum(x.sum() for x in logits + box_reg + centerness).backward()
    params = dict(head.named_parameters())
    assert params
    missing = [name for name, p in params.items() if p.grad is None]
    assert missing == []
    if options.get("use_scale", True):
        assert {f"scales.{i}.scale" for i in range(len(STRIDES))} <= set(params)
