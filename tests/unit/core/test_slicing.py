"""Sliced inference through SAHI (fcos_d2/slicing.py): SAHI's own Detectron2 loader takes an
fcos-d2 yaml as it is; tiles map back to image coordinates; the demo's --slice flag."""

import os
import sys

import cv2
import numpy as np
import pytest
import sahi.predict  # installed by tools/setup_env.sh: missing is a failure, not a skip
from detectron2.engine import DefaultPredictor

from fcos_d2.config import get_fcos_cfg
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.slicing import category_mapping, sahi_detection_model, sliced_predict
from helpers import QUICKSTART, ROOT, TINY_OPTS, untrained_weights

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
    # SAHI's own sliced prediction with that model gives fcos_d2.slicing's detections.
    big = _image(2 * S, 2 * W, seed=1)
    raw = sahi.predict.get_sliced_prediction(
        big[:, :, ::-1], model, S, W, 0.0, 0.0, perform_standard_pred=False, verbose=0
    )
    wrapped = sliced_predict(sahi_detection_model(full, 0.0), big, (S, W), 0.0, full_image=False)
    assert len(raw.object_prediction_list) == len(wrapped) > 0
    raw_rows = sorted(
        (p.category.id, round(p.score.value, 4), *np.round(np.float32(p.bbox.to_xyxy()), 2))
        for p in raw.object_prediction_list
    )
    assert raw_rows == _rows(wrapped)


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


def test_demo_slice(cfg, tmp_path, monkeypatch):
    image = _image(2 * S, 3 * W)
    cv2.imwrite(str(tmp_path / "big.png"), image)
    args = ["--config-file", QUICKSTART, "--input", str(tmp_path / "big.png")]
    opts = ["--opts", *TINY_OPTS, "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS]
    opts += ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]
    drawn = []  # the detections the demo draws (the Visualizer's colours are random)
    draw = demo.draw
    monkeypatch.setattr(demo, "draw", lambda im, inst, md: drawn.append(inst) or draw(im, inst, md))
    demo.main([*args, "--output", str(tmp_path / "out"), "--slice", str(S), str(W),
               "--overlap", "0", "--confidence-threshold", "0.0", *opts])  # fmt: skip
    assert cv2.imread(str(tmp_path / "out" / "big.png")).shape == image.shape
    # They are SAHI's sliced detections of the image, not the whole-image predictor's.
    sliced = sliced_predict(sahi_detection_model(cfg, 0.0), image, (S, W), 0.0)
    assert len(drawn) == 1 and len(sliced) > 0
    assert _rows(drawn[0]) == _rows(sliced)
    assert _rows(drawn[0]) != _rows(DefaultPredictor(cfg)(image)["instances"])
    with pytest.raises(ValueError, match="--class-thresholds is not supported with --slice"):
        demo.main([*args, "--output", str(tmp_path / "o2"), "--slice", "64", "64",
                   "--class-thresholds", "t.json", *opts])  # fmt: skip
