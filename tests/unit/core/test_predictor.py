"""fcos_d2/predictor.py: Predictor is DefaultPredictor on BGR uint8 images, converts the
other accepted images as fcos_d2.images does, refuses missing weights; BatchPredictor
gives each image Predictor's detections (per-class thresholds: test_class_thresholds.py)."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor

import fcos_d2
from fcos_d2 import InputError
from fcos_d2.images import to_bgr_uint8
from fcos_d2.predictor import BatchPredictor, Predictor
from helpers import QUICKSTART, TINY_OPTS, untrained_weights


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS + ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(untrained_weights(tmp_path_factory.mktemp("w") / "w.pth"))
    return cfg


def _images(n, shape=(150, 170, 3)):
    g = np.random.default_rng(1)
    return [g.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _same(a, b, atol=0.0):
    return (
        len(a) == len(b) > 0
        and torch.equal(a.pred_classes, b.pred_classes)
        and torch.allclose(a.scores, b.scores, atol=atol, rtol=0)
        and torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=atol * 1e3, rtol=0)
    )


def test_bgr_images_give_default_predictors_detections(cfg):
    (image,) = _images(1)
    ours = Predictor(cfg)(image)["instances"]
    theirs = DefaultPredictor(cfg)(image)["instances"]
    assert _same(ours, theirs)
    assert ours.image_size == (150, 170)


def test_other_images_are_converted_first(cfg):
    predictor = Predictor(cfg)
    g = np.random.default_rng(2)
    for image in (
        g.integers(0, 256, (150, 170), dtype=np.uint8),  # grayscale
        g.integers(0, 256, (150, 170, 4), dtype=np.uint8),  # BGRA
        g.integers(0, 65536, (150, 170, 3), dtype=np.uint16),  # 16-bit
    ):
        expected = predictor(to_bgr_uint8(image))["instances"]
        assert _same(predictor(image)["instances"], expected)


def test_batch_gives_each_images_detections(cfg):
    images = _images(3)  # one size: the batch has no padding that single images lack
    predictor = Predictor(cfg)
    single = [predictor(im)["instances"] for im in images]
    batched = BatchPredictor(cfg, batch_size=2)(images)
    assert len(batched) == 3
    for one, out in zip(single, batched):
        assert _same(out["instances"], one, atol=1e-5)


def test_refusals(cfg):
    no_weights = cfg.clone()
    no_weights.MODEL.WEIGHTS = ""
    with pytest.raises(InputError, match="needs trained weights: set MODEL.WEIGHTS"):
        Predictor(no_weights)
    with pytest.raises(InputError, match="batch_size must be >= 1, got 0"):
        BatchPredictor(cfg, batch_size=0)
