"""Every config in configs/ merges and builds a model on the CPU; the third-party route of
loading a config (the same model for every config:
tests/integration/test_third_party_configs.py)."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fcos_d2
from helpers import ROOT, load_cfg, third_party_cfg

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    assert {"Base-FCOS.yaml", "FCOS_R50_1x.yaml", "FCOS_imprv_R50_1x.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_build_model(path):
    cfg = load_cfg(path)
    model = build_model(cfg)
    assert type(model).__name__ == "FCOS"
    assert model.num_classes == cfg.MODEL.FCOS.NUM_CLASSES
    assert model.strides == [8, 16, 32, 64, 128][: len(cfg.MODEL.FCOS.IN_FEATURES)]
    assert model.head.cls_logits.out_channels == cfg.MODEL.FCOS.NUM_CLASSES
    assert all(p.device == torch.device("cpu") for p in model.parameters())


def test_paper_recipe():
    cfg = load_cfg(os.path.join(ROOT, "configs", "FCOS_R50_1x.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.SOLVER.MAX_ITER == 90000 and tuple(cfg.SOLVER.STEPS) == (60000, 80000)
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.01
    assert cfg.SOLVER.WEIGHT_DECAY == 1e-4 and cfg.SOLVER.MOMENTUM == 0.9
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    f = cfg.MODEL.FCOS
    assert (f.CENTER_SAMPLING_RADIUS, f.LOC_LOSS_TYPE, f.NORM_REG_TARGETS) == (0.0, "iou", False)
    assert (f.SCORE_THRESH_TEST, f.NMS_THRESH_TEST, f.TOPK_CANDIDATES_TEST) == (0.05, 0.6, 1000)
    assert list(f.SIZES_OF_INTEREST) == [64, 128, 256, 512] and f.LOCATION_OFFSET == 0.5


@pytest.mark.parametrize(
    "name,depth,weights",
    [
        ("FCOS_R50_2x_ms.yaml", 50, "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
        ("FCOS_R101_2x_ms.yaml", 101, "detectron2://ImageNetPretrained/MSRA/R-101.pkl"),
        ("FCOS_X101_32x8d_2x_ms.yaml", 101, "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"),
    ],
)
def test_multiscale_2x_schedules(name, depth, weights):
    cfg = load_cfg(os.path.join(ROOT, "configs", name))
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.WEIGHTS == weights
    assert cfg.SOLVER.MAX_ITER == 180000 and tuple(cfg.SOLVER.STEPS) == (120000, 160000)
    sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    assert min(sizes) == 640 and max(sizes) == 800 and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    if "X101" in name:  # FAIR's ResNeXt weights: stride in the 3x3 conv, ImageNet std
        assert cfg.MODEL.RESNETS.NUM_GROUPS == 32 and cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 8
        assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.MODEL.PIXEL_STD[0] > 50


FIDELITY_KEYS = (
    "LOCATION_STRIDE",
    "SIZE_RANGE_BOUNDS",
    "MATCH_AREA",
    "IOU_LOSS_SMOOTH",
    "CLIP_BOXES_TEST",
    "NMS_LEGACY_PLUS_ONE",
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_paper_rules_by_default_and_each_source_sets_its_own(path):
    import yaml

    cfg = load_cfg(path)
    f = cfg.MODEL.FCOS
    if os.sep + "compat" + os.sep not in path:
        # Every config that does not name a source follows the paper (sec. 3.2).
        assert f.SIZE_RANGE_BOUNDS == "closed" and f.LOCATION_STRIDE == "level"
        assert f.MATCH_AREA == "wh" and f.IOU_LOSS_SMOOTH == ""
        return
    # A compat config writes each of these keys itself (or inherits them from a compat
    # config that does), so a change of the defaults cannot change what it reproduces.
    written = {}
    while True:
        with open(path) as fh:
            data = yaml.safe_load(fh)
        for key, value in data.get("MODEL", {}).get("FCOS", {}).items():
            written.setdefault(key, value)
        base = data.get("_BASE_", "")
        if "compat" not in os.path.abspath(os.path.join(os.path.dirname(path), base)):
            break
        path = os.path.join(os.path.dirname(path), base)
    assert set(FIDELITY_KEYS) <= set(written), set(FIDELITY_KEYS) - set(written)
    expected = {
        "FCOS_R50_torchvision.yaml": ("open", "torchvision", "padded_size_div_grid"),
        "FCOS_R50_adelaidet.yaml": ("closed", "wh", "level"),
    }.get(os.path.basename(path), ("closed", "wh_plus_one", "level"))
    assert (f.SIZE_RANGE_BOUNDS, f.MATCH_AREA, f.LOCATION_STRIDE) == expected


def test_complete_config_keeps_values_and_fills_defaults(tmp_path):
    from fcos_d2.config import complete_fcos_config, get_fcos_cfg

    child = tmp_path / "child.yaml"
    base = os.path.join(ROOT, "configs", "quickstart.yaml")
    child.write_text(f"_BASE_: {base}\nMODEL:\n  FCOS:\n    NUM_CLASSES: 7\n")
    full = complete_fcos_config(third_party_cfg(str(child)))
    expected = get_fcos_cfg(str(child))
    expected.MODEL.DEVICE = "cpu"
    assert full.dump() == expected.dump()
    assert full.MODEL.FCOS.NUM_CLASSES == 7  # the child's value
    assert full.MODEL.FCOS.NUM_CONVS == load_cfg(base).MODEL.FCOS.NUM_CONVS  # the base's
    assert complete_fcos_config(expected) is expected  # nothing missing: unchanged


def test_typo_key_named_with_the_nearest_in_both_routes(tmp_path):
    from fcos_d2.config import UnknownConfigKeyError, get_fcos_cfg

    bad = tmp_path / "typo.yaml"
    bad.write_text(
        f"_BASE_: {os.path.join(ROOT, 'configs', 'quickstart.yaml')}\n"
        "MODEL:\n  FCOS:\n    NUM_CLASES: 3\n"
    )
    with pytest.raises(UnknownConfigKeyError) as e:
        get_fcos_cfg(str(bad))  # add_fcos_config route
    assert str(bad) in str(e.value)
    assert "MODEL.FCOS.NUM_CLASES" in str(e.value) and "MODEL.FCOS.NUM_CLASSES?" in str(e.value)
    with pytest.raises(UnknownConfigKeyError) as e:
        build_model(third_party_cfg(str(bad)))  # third-party route: at build time
    assert "MODEL.FCOS.NUM_CLASES" in str(e.value) and "MODEL.FCOS.NUM_CLASSES?" in str(e.value)
    # The plain route of a script: get_cfg(), add_fcos_config, merge_from_file, build.
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(str(bad))
    with pytest.raises(UnknownConfigKeyError) as e:
        build_model(cfg)
    assert "MODEL.FCOS.NUM_CLASES" in str(e.value) and "MODEL.FCOS.NUM_CLASSES?" in str(e.value)
    ema_typo = tmp_path / "ema_typo.yaml"
    ema_typo.write_text("MODEL:\n  EMA:\n    DECAI: 0.9\n")
    with pytest.raises(UnknownConfigKeyError, match=r"MODEL.EMA.DECAI .*MODEL.EMA.DECAY\?"):
        get_fcos_cfg(str(ema_typo))
    with pytest.raises(KeyError):  # what callers of yacs' merge expect to catch
        get_fcos_cfg(None, ["MODEL.EMA.DECAI", "0.9"])
    with pytest.raises(UnknownConfigKeyError, match=r"SOLVER.BASE_LR\?"):
        get_fcos_cfg(None, ["SOLVER.BASE_LRR", "0.1"])
