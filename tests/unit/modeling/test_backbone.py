"""fcos_d2/modeling/backbone.py: the ResNet-FPN backbone with P6/P7 (from P5 or C5), and
without them for a three-level head."""

import os

import pytest
from detectron2.modeling import build_model

from helpers import ROOT, load_cfg


def test_three_level_head_has_no_p6_p7_block():
    cfg = load_cfg(os.path.join(ROOT, "configs", "quickstart.yaml"))
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [32, 64]
    model = build_model(cfg)
    assert sorted(model.backbone.output_shape()) == ["p3", "p4", "p5"]
    assert model.strides == [8, 16, 32] and len(model.head.scales) == 3
    assert not any("top_block" in name for name, _ in model.named_parameters())


def test_top_block_from_res5():
    cfg = load_cfg(os.path.join(ROOT, "configs", "quickstart.yaml"))
    cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE = "res5"
    model = build_model(cfg)
    res5 = model.backbone.bottom_up.output_shape()["res5"].channels
    assert model.backbone.top_block.p6.in_channels == res5 != cfg.MODEL.FPN.OUT_CHANNELS
    cfg.MODEL.FCOS.TOP_BLOCK_IN_FEATURE = "c5"
    with pytest.raises(ValueError, match="TOP_BLOCK_IN_FEATURE"):
        build_model(cfg)


def test_p6_p7_from_p5_by_stride_2_convs():
    cfg = load_cfg(os.path.join(ROOT, "configs", "quickstart.yaml"))
    backbone = build_model(cfg).backbone
    shapes = backbone.output_shape()
    assert [shapes[f].stride for f in ("p3", "p4", "p5", "p6", "p7")] == [8, 16, 32, 64, 128]
    p6, p7 = backbone.top_block.p6, backbone.top_block.p7
    assert p6.in_channels == cfg.MODEL.FPN.OUT_CHANNELS  # paper: from P5
    assert p6.stride == (2, 2) and p7.stride == (2, 2) and p6.kernel_size == (3, 3)
