"""Sliced inference through SAHI (fcos_d2/slicing.py): SAHI's own Detectron2 loader takes an
fcos-d2 yaml as it is; tiles map back to image coordinates; the demo's --slice flag."""

import os
import sys

import cv2
import numpy as np
import pytest
from detectron2.engine import DefaultPredictor

from fcos_d2.config import get_fcos_cfg
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.slicing import category_mapping, sahi_detection_model, sliced_predict
from helpers import QUICKSTART, ROOT, TINY_OPTS, untrained_weights

sahi = pytest.importorskip("sahi", reason="SAHI is installed by tools/setup_env.sh")

sys.path.insert(0, os.path.join(ROOT, "tools"))
import demo  # noqa: E402

S, W = 128, 160  # TINY_OPTS' test size: a 128 x 160 tile is not resized


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    weights = untrained_weights(tmp_path_factory.mktemp("sahi") / "untrained.pth")
    opts = [*TINY_OPTS, "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]
    return get_fcos_cfg(QUICKSTART, [*opts, "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])


def _image(h, w, seed=0):
    g = np.random.default_rng(seed)
    img = cv2.resize(g.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def _rows(inst):
    boxes = inst.pred_boxes.tensor.numpy()
    return sorted(
        (int(c), round(float(s), 4), *np.round(b, 2))
        for b, s, c in zip(boxes, inst.scores, inst.pred_classes)
    )


def test_category_mapping_from_metadata(cfg):
    assert category_mapping(cfg) == {str(i): n for i, n in enumerate(SYNTH_CLASSES)}
    other = cfg.clone()
    other.DATASETS.TRAIN = other.DATASETS.TEST = ("not_registered",)
    assert category_mapping(other) == {str(i): str(i) for i in range(len(SYNTH_CLASSES))}


def test_sahi_loads_the_plain_yaml(cfg, tmp_path):
    """SAHI's own route (get_cfg, set_new_allowed, merge_from_file of a yaml whose _BASE_ is
    configs/quickstart.yaml, DefaultPredictor) predicts what fcos-d2's config route
    predicts."""
    from sahi import AutoDetectionModel

    child = tmp_path / "tiny.yaml"
    child.write_text(
        f"_BASE_: {QUICKSTART}\nMODEL:\n  FPN:\n    OUT_CHANNELS: 32\n  FCOS:\n"
        "    NUM_CONVS: 1\n    SCORE_THRESH_TEST: 0.0\n"
    )
    model = AutoDetectionModel.from_pretrained(
        model_type="detectron2",
        model_path=cfg.MODEL.WEIGHTS,
        config_path=str(child),
        confidence_threshold=0.0,
        device="cpu",
    )
    assert model.category_names == list(SYNTH_CLASSES)  # from the dataset's metadata
    full = cfg.clone()
    full.INPUT.MIN_SIZE_TEST, full.INPUT.MAX_SIZE_TEST = 352, 512  # the yaml's test size
    image = _image(200, 300)
    ours = DefaultPredictor(full)(image)["instances"]
    model.perform_inference(image[:, :, ::-1])  # SAHI passes RGB
    theirs = model.original_predictions["instances"]
    assert len(ours) > 0
    assert _rows(ours) == _rows(theirs)


def test_tiles_map_back_to_image_coordinates(cfg):
    """Two side-by-side tiles (no overlap, no whole-image pass, no merging): the detections
    are those of each tile alone, the right tile's shifted by its offset."""
    image = _image(S, 2 * W)
    predictor = DefaultPredictor(cfg)
    left = predictor(image[:, :W])["instances"]
    right = predictor(np.ascontiguousarray(image[:, W:]))["instances"]
    right.pred_boxes.tensor[:, 0::2] += W
    model = sahi_detection_model(cfg, confidence_threshold=0.0)
    out = sliced_predict(
        model, image, (S, W), 0.0, full_image=False, postprocess={"match_threshold": 1.01}
    )
    assert len(left) > 0 and len(right) > 0
    assert _rows(out) == sorted(_rows(left) + _rows(right))
    assert out.image_size == (S, 2 * W)
    assert float(out.pred_boxes.tensor[:, 0::2].max()) > W  # detections from the right tile


def test_sliced_predict_refuses_other_images(cfg):
    model = sahi_detection_model(cfg)
    with pytest.raises(ValueError, match=r"uint8 BGR image \(H, W, 3\), got float32 \(8, 8\)"):
        sliced_predict(model, np.zeros((8, 8), np.float32), (4, 4))


def test_demo_slice(cfg, tmp_path):
    image = _image(2 * S, 3 * W)
    cv2.imwrite(str(tmp_path / "big.png"), image)
    args = ["--config-file", QUICKSTART, "--input", str(tmp_path / "big.png")]
    opts = ["--opts", *TINY_OPTS, "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS]
    opts += ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]
    demo.main([*args, "--output", str(tmp_path / "out"), "--slice", str(S), str(W),
               "--overlap", "0", "--confidence-threshold", "0.0", *opts])  # fmt: skip
    drawn = cv2.imread(str(tmp_path / "out" / "big.png")).astype(int)
    assert drawn.shape == image.shape
    assert np.abs(drawn - image).max() > 50  # boxes drawn
    with pytest.raises(ValueError, match="--class-thresholds is not supported with --slice"):
        demo.main([*args, "--output", str(tmp_path / "o2"), "--slice", "64", "64",
                   "--class-thresholds", "t.json", *opts])  # fmt: skip
