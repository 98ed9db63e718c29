"""Every config in configs/ merges and builds a model on the CPU."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fcos_d2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def load_cfg(path):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    assert {"Base-FCOS.yaml", "FCOS_R50_1x.yaml", "FCOS_imprv_R50_1x.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_build_model(path):
    cfg = load_cfg(path)
    model = build_model(cfg)
    assert type(model).__name__ == "FCOS"
    assert model.num_classes == cfg.MODEL.FCOS.NUM_CLASSES
    assert model.strides == [8, 16, 32, 64, 128]
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
