"""FCOS-RT: its config, training on the built-in data, its BatchNorm head folded at inference."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import CycleBatchNormList, ShapeSpec
from detectron2.modeling import build_model

import fcos_d2
from fcos_d2.modeling.head import FCOSHead
from helpers import ROOT

RT = os.path.join(ROOT, "configs", "FCOS_RT_R50_4x.yaml")


def test_config_follows_adelaidet_fcos_rt():
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(RT)
    cfg.MODEL.DEVICE = "cpu"
    f = cfg.MODEL.FCOS
    assert list(f.IN_FEATURES) == ["p3", "p4", "p5"] and list(f.SIZES_OF_INTEREST) == [64, 128]
    assert f.NORM == "SyncBN" and cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (512, 736)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(256, 609, 32))
    assert cfg.INPUT.MAX_SIZE_TRAIN == 900
    assert tuple(cfg.SOLVER.STEPS) == (300000, 340000) and cfg.SOLVER.MAX_ITER == 360000
    model = build_model(cfg)
    assert model.strides == [8, 16, 32]
    assert not any("top_block" in name for name, _ in model.named_parameters())
    norms = [m for m in model.head.cls_tower if isinstance(m, CycleBatchNormList)]
    assert len(norms) == 4 and all(isinstance(bn, torch.nn.SyncBatchNorm) for bn in norms[0])
    assert len(norms[0]) == 3  # one set of statistics per level


def _bn_head(use_deformable: bool, seed: int = 0) -> FCOSHead:
    torch.manual_seed(seed)
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32)]
    head = FCOSHead(
        input_shape=shapes,
        num_classes=3,
        num_convs=2,
        norm="BN",
        use_deformable=use_deformable,
        norm_reg_targets=True,
    )
    g = torch.Generator().manual_seed(seed + 1)
    for m in head.modules():  # statistics and affine far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(32, generator=g))
            m.running_var.copy_(torch.rand(32, generator=g) * 3 + 0.1)
        if isinstance(m, CycleBatchNormList):
            m.weight.data.copy_(torch.randn(32, generator=g))
            m.bias.data.copy_(torch.randn(32, generator=g))
    for m in head.modules():  # offsets that really move the deformable taps
        if hasattr(m, "offset") and isinstance(m.offset, torch.nn.Conv2d):
            torch.nn.init.normal_(m.offset.weight, std=0.05)
    return head.eval()


@pytest.mark.parametrize("use_deformable", [False, True])
def test_head_batchnorm_folded_at_inference_equals_unfolded(use_deformable):
    head = _bn_head(use_deformable)
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 32, s, s + 3, generator=g) for s in (16, 8, 4)]
    calls = []
    hooks = [
        m.register_forward_hook(lambda *a: calls.append(1))
        for m in head.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        plain = head(feats)  # not fused yet: fusion is a step (FCOS.fuse runs it)
        assert len(calls) == 2 * 2 * 3  # 2 towers x 2 norms x 3 levels
        calls.clear()
        head.fuse()
        folded = head(feats)
        assert calls == []  # no BatchNorm ran: folded into the convolutions
        head.unfuse()
        plain = head(feats)
        assert len(calls) == 2 * 2 * 3  # 2 towers x 2 norms x 3 levels
    for hook in hooks:
        hook.remove()
    for a, b in zip(folded, plain):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    # The folded weights follow a change of the statistics (no stale cache).
    head.fold_bn = True
    with torch.no_grad():
        before = head(feats)[0][2]
        head.cls_tower[1][2].running_var.mul_(4.0)  # level 2's statistics of the first norm
        folded = head(feats)
        head.fold_bn = False
        plain = head(feats)
    assert not torch.allclose(folded[0][2], before, rtol=1e-3, atol=1e-3)
    for x, y in zip(folded[0], plain[0]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    for bn in (m for m in head.modules() if isinstance(m, CycleBatchNormList)):
        assert bn._pos == 0  # cycling position intact for training


def test_training_mode_uses_batch_statistics():
    head = _bn_head(False).train()
    feats = [torch.randn(2, 32, s, s) for s in (16, 8, 4)]
    mean_before = head.cls_tower[1][0].running_mean.clone()
    head(feats)
    assert not torch.equal(head.cls_tower[1][0].running_mean, mean_before)
