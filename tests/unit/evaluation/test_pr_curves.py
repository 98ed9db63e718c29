"""fcos_d2/evaluation/pr_curves.py: the COCO evaluator that draws precision-recall curves,
its curves against pycocotools, and its fast COCOeval against pycocotools."""

import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_d2.config import get_fcos_cfg
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.engine import Trainer
from fcos_d2.evaluation import PRCurveCOCOEvaluator, pr_curves_at
from helpers import evaluate_ground_truth


def test_coco_evaluation_draws_pr_curves_of_its_ap(coco_val4, tmp_path):
    name = "fcos_test_coco_pr"
    register_coco_instances(name, {}, coco_val4[0], coco_val4[1])
    evaluator = Trainer.build_evaluator(
        get_fcos_cfg(opts=["OUTPUT_DIR", str(tmp_path)]), name, str(tmp_path / "eval")
    )
    assert isinstance(evaluator, PRCurveCOCOEvaluator)
    g = torch.Generator().manual_seed(0)

    def jitter(boxes):  # shift each box by up to 15% of its size: some fail IoU 0.75
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        return boxes + (torch.rand(boxes.shape, generator=g) - 0.5) * 0.3 * wh

    results = evaluate_ground_truth(evaluator, DatasetCatalog.get(name), jitter)["bbox"]
    png = tmp_path / "eval" / "pr_curves_bbox.png"
    assert evaluator.pr_curves_file == str(png) and png.is_file()
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] > image.shape[0] > 300  # two panels
    assert 0 < results["AP75"] < results["AP50"] <= 100
    # The drawn "all classes" curves are COCO's: their means are its AP50 and AP75. The
    # precision array is recomputed here with pycocotools from the evaluator's outputs.
    coco_gt = COCO(coco_val4[0])
    coco_dt = coco_gt.loadRes(str(tmp_path / "eval" / "coco_instances_results.json"))
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    for iou, key in ((0.5, "AP50"), (0.75, "AP75")):
        per_class, valid, mean = pr_curves_at(ev.eval["precision"], ev.params.iouThrs, iou)
        assert per_class.shape == (101, len(SYNTH_CLASSES))
        assert 100 * mean.mean() == pytest.approx(results[key], abs=1e-6)
        assert np.allclose(per_class[:, valid].mean(1), mean)


# --------------------------------------------------------------------- COCO evaluation
def test_coco_evaluator_fast_backend_gives_pycocotools_results(tmp_path):
    """The COCOeval that Trainer.build_evaluator uses (compat) against pycocotools."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.structures import Boxes, Instances

    from fcos_d2 import compat
    from fcos_d2.evaluation import PRCurveCOCOEvaluator

    rng = np.random.default_rng(0)
    images, annos, outputs = [], [], []
    for i in range(40):
        images.append({"id": i + 1, "width": 320, "height": 240, "file_name": f"{i}.jpg"})
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, (n, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(110), (n, 2)))
        cats = rng.integers(1, 6, n)
        for k in range(n):
            annos.append(
                {
                    "id": len(annos) + 1,
                    "image_id": i + 1,
                    "category_id": int(cats[k]),
                    "bbox": [*xy[k], *wh[k]],
                    "area": float(wh[k].prod()),
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
        # Detections: jittered objects (some with another class) and random boxes.
        near = np.concatenate([xy, xy + wh], 1) + rng.normal(0, 4, (n, 4))
        far = rng.uniform(0, 200, (30, 2)).repeat(2, 1) + [0, 0, 40, 30]
        boxes = np.concatenate([near, far])
        classes = np.concatenate(
            [np.where(rng.random(n) < 0.1, 0, cats - 1), rng.integers(0, 5, 30)]
        )
        inst = Instances(
            (240, 320),
            pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
            scores=torch.tensor(np.concatenate([rng.uniform(0.4, 1, n), rng.uniform(0, 0.6, 30)])),
            pred_classes=torch.tensor(classes),
        )
        outputs.append(({"image_id": i + 1}, {"instances": inst}))
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 6)]
    with open(tmp_path / "gt.json", "w") as f:
        json.dump({"images": images, "annotations": annos, "categories": cats}, f)
    name = "fcos_d2_test_fast_cocoeval"
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path))
    try:
        DatasetCatalog.get(name)  # sets the class names and id mapping of the metadata
        assert compat.fast_cocoeval_class(), "no fast COCOeval: tools/setup_env.sh installs one"
        results = {}
        for fast in (False, True):
            evaluator = PRCurveCOCOEvaluator(name, output_dir=None, use_fast_impl=fast)
            assert evaluator._use_fast_impl is fast
            evaluator.reset()
            for inp, out in outputs:
                evaluator.process([inp], [out])
            results[fast] = evaluator.evaluate()["bbox"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results[False].keys() == results[True].keys() and len(results[False]) == 6 + 5
    assert 5 < results[False]["AP"] < 95  # neither trivial nor perfect
    for key, value in results[False].items():
        assert abs(results[True][key] - value) < 1e-4 * 100, key  # AP in percent
