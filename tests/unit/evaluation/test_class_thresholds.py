"""Per-class score thresholds: F1-optimal against brute force, the tool, and the predictors."""

import contextlib
import io
import itertools
import json
import math
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from pycocotools.coco import COCO

import fcos_d2
from fcos_d2 import InputError
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.evaluation import f1_optimal_thresholds, load_class_thresholds
from fcos_d2.predictor import BatchPredictor, Predictor
from helpers import QUICKSTART, ROOT, TINY_OPTS, untrained_weights

sys.path.insert(0, os.path.join(ROOT, "tools"))
import class_thresholds as tool  # noqa: E402
import demo  # noqa: E402

# Hand-made ground truth: (image, category, [x, y, w, h]).
GT = [
    (1, 1, [0, 0, 10, 10]),
    (1, 1, [20, 0, 10, 10]),
    (2, 1, [0, 0, 20, 20]),
    (3, 1, [0, 0, 8, 8]),
    (1, 2, [30, 30, 10, 10]),
    (2, 3, [50, 50, 10, 10]),
]
# Detections: (image, category, box, score). Category 1: a duplicate of a matched box (FP),
# a box of IoU 0.39 (FP), one far away (FP). Category 2: two equal scores, one TP and one
# FP (a threshold keeps both or neither). Category 3: no true positive. Category 4: no GT.
DETS = [
    (1, 1, [1, 0, 10, 10], 0.9),
    (1, 1, [0, 0, 10, 10], 0.8),
    (2, 1, [0, 0, 20, 21], 0.6),
    (1, 1, [20, 1, 10, 10], 0.4),
    (2, 1, [5, 5, 20, 20], 0.35),
    (1, 1, [50, 50, 5, 5], 0.3),
    (1, 2, [30, 30, 10, 10], 0.7),
    (2, 2, [0, 0, 5, 5], 0.7),
    (3, 2, [0, 0, 5, 5], 0.2),
    (2, 3, [0, 40, 10, 10], 0.5),
    (1, 4, [0, 0, 10, 10], 0.9),
]
NAMES = ["a", "b", "c", "d"]


def _coco_gt():
    data = {
        "images": [
            {"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)
        ],
        "categories": [{"id": c, "name": NAMES[c - 1]} for c in (1, 2, 3, 4)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": im,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (im, c, b) in enumerate(GT)
        ],
    }
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results():
    return [{"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in DETS]


def _iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _brute_force(category):
    """Best (threshold, F1) over every threshold, matching from scratch at each one."""
    gts = [(im, b) for im, c, b in GT if c == category]
    scores = sorted({s for _, c, _, s in DETS if c == category}, reverse=True)
    best = (None, 0.0)
    for t in scores:  # descending: on equal F1 the higher threshold wins
        kept = [(im, b, s) for im, c, b, s in DETS if c == category and s >= t]
        tp = 0
        for image, group in itertools.groupby(sorted(kept, key=lambda d: d[0]), lambda d: d[0]):
            matched = set()
            for _, box, _ in sorted(group, key=lambda d: -d[2]):
                choice, best_iou = None, 0.5
                for j, (im, g) in enumerate(gts):
                    if im == image and j not in matched and _iou(box, g) >= best_iou:
                        choice, best_iou = j, _iou(box, g)
                if choice is not None:
                    matched.add(choice)
                    tp += 1
        fp, fn = len(kept) - tp, len(gts) - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best[1]:
            best = (t, f1)
    return best


def test_thresholds_equal_a_brute_force_f1_maximisation():
    per_class = f1_optimal_thresholds(_coco_gt(), _results())
    assert [c["name"] for c in per_class] == NAMES
    for c in per_class:
        threshold, f1 = _brute_force(c["category_id"])
        assert c["threshold"] == threshold, c
        assert c["f1"] == pytest.approx(f1)
    # The hand-computed values: category 1 keeps 0.9 TP, 0.8 FP, 0.6 TP, 0.4 TP: F1 6/8;
    # category 2 must keep both 0.7 (one TP, one FP): F1 2/3.
    assert [c["threshold"] for c in per_class] == [0.4, 0.7, None, None]
    assert per_class[0]["f1"] == pytest.approx(0.75)
    assert (per_class[0]["precision"], per_class[0]["recall"]) == (0.75, 0.75)
    assert per_class[1]["f1"] == pytest.approx(2 / 3)
    assert [c["num_gt"] for c in per_class] == [4, 1, 1, 0]
    assert [c["num_detections"] for c in per_class] == [6, 3, 1, 1]


def test_tool_writes_thresholds_the_predictors_load(tmp_path):
    gt_json, results = tmp_path / "gt.json", tmp_path / "results.json"
    gt_json.write_text(json.dumps(_coco_gt().dataset))
    results.write_text(json.dumps(_results()))
    out = tmp_path / "thresholds.json"
    tool.main(["--results", str(results), "--gt-json", str(gt_json), "--output", str(out)])
    assert load_class_thresholds(str(out)) == [0.4, 0.7, math.inf, math.inf]
    assert load_class_thresholds(str(out), class_names=NAMES) == [0.4, 0.7, math.inf, math.inf]
    with pytest.raises(InputError, match="thresholds are for classes"):
        load_class_thresholds(str(out), class_names=["a", "b", "x", "d"])
    with pytest.raises(InputError, match="not found"):
        load_class_thresholds(str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="ground truth json not found"):
        tool.main(["--results", str(results), "--gt-json", "nope.json", "--output", str(out)])


@pytest.fixture(scope="module")
def predictor_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS + ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(untrained_weights(tmp / "untrained.pth"))
    g = np.random.default_rng(0)
    images = [g.integers(0, 256, (150, 170, 3), dtype=np.uint8) for _ in range(3)]
    unfiltered = Predictor(cfg)(images[0])["instances"]
    # Per-class thresholds that keep some and drop some detections of each class; class 4
    # is never kept.
    thresholds = []
    for k in range(len(SYNTH_CLASSES)):
        s = unfiltered.scores[unfiltered.pred_classes == k]
        thresholds.append(float(s.median()) if len(s) > 1 else 0.0)
    thresholds[4] = None
    return cfg, images, unfiltered, thresholds, tmp


def _expected(instances, thresholds):
    limit = torch.tensor([math.inf if t is None else t for t in thresholds])
    return instances[instances.scores >= limit[instances.pred_classes]]


def _same(a, b):
    return (
        len(a) == len(b)
        and torch.equal(a.scores, b.scores)
        and torch.equal(a.pred_classes, b.pred_classes)
        and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    )


def test_predictor_applies_per_class_thresholds(predictor_setup):
    cfg, images, unfiltered, thresholds, _ = predictor_setup
    expected = _expected(unfiltered, thresholds)
    assert 0 < len(expected) < len(unfiltered)
    assert 4 not in expected.pred_classes.tolist()
    assert _same(Predictor(cfg, thresholds=thresholds)(images[0])["instances"], expected)
    # A single global threshold, as before.
    glob = Predictor(cfg, thresholds=0.01)(images[0])["instances"]
    assert _same(glob, unfiltered[unfiltered.scores >= 0.01])


def test_predictors_load_a_thresholds_file(predictor_setup):
    cfg, images, unfiltered, thresholds, tmp = predictor_setup
    path = tmp / "thresholds.json"
    path.write_text(
        json.dumps(
            {"classes": [{"name": n, "threshold": t} for n, t in zip(SYNTH_CLASSES, thresholds)]}
        )
    )
    single = Predictor(cfg, thresholds=str(path))
    assert _same(single(images[0])["instances"], _expected(unfiltered, thresholds))
    batch = BatchPredictor(cfg, batch_size=2, thresholds=str(path))
    plain = BatchPredictor(cfg, batch_size=2)
    for got, raw in zip(batch(images), plain(images)):
        assert _same(got["instances"], _expected(raw["instances"], thresholds))


def test_thresholds_must_fit_the_model(predictor_setup, tmp_path):
    cfg, _, _, thresholds, _ = predictor_setup
    with pytest.raises(InputError, match="4 class thresholds, but MODEL.FCOS.NUM_CLASSES is 5"):
        Predictor(cfg, thresholds=thresholds[:4])
    path = tmp_path / "other.json"
    path.write_text(
        json.dumps({"classes": [{"name": f"x{i}", "threshold": 0.1} for i in range(5)]})
    )
    with pytest.raises(InputError, match="thresholds are for classes"):
        Predictor(cfg, thresholds=str(path))


def test_demo_draws_with_class_thresholds(predictor_setup, tmp_path):
    cfg, images, _, thresholds, _ = predictor_setup
    path = tmp_path / "thresholds.json"
    path.write_text(
        json.dumps(
            {"classes": [{"name": n, "threshold": t} for n, t in zip(SYNTH_CLASSES, thresholds)]}
        )
    )
    cv2.imwrite(str(tmp_path / "img.png"), images[0])

    def run(out, *flags):
        demo.main(
            [
                "--config-file",
                QUICKSTART,
                "--input",
                str(tmp_path / "img.png"),
                "--output",
                str(tmp_path / out),
                *flags,
                "--opts",
                *TINY_OPTS,
                "MODEL.FCOS.SCORE_THRESH_TEST",
                "0.0",
                "MODEL.WEIGHTS",
                cfg.MODEL.WEIGHTS,
            ]
        )
        return cv2.imread(str(tmp_path / out / "img.png")).astype(int)

    with_thresholds = run("per_class", "--class-thresholds", str(path))
    nothing = run("none", "--confidence-threshold", "2")
    # Scores are <= 1: a global 2 draws nothing; the per-class thresholds draw boxes.
    assert np.abs(nothing - images[0]).max() <= 2
    assert np.abs(with_thresholds - images[0]).max() > 50
