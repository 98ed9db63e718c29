"""The evaluator of each dataset type (COCO, LVIS, Pascal VOC) and the precision-recall PNG."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_coco_json,
    load_lvis_json,
    register_coco_instances,
    register_lvis_instances,
    register_pascal_voc,
)
from detectron2.evaluation import LVISEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import fcos_d2
from fcos_d2 import InputError
from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco
from fcos_d2.data.export_formats import write_voc_dataset
from fcos_d2.engine import Trainer
from fcos_d2.evaluation import PRCurveCOCOEvaluator, pr_curves_at
from helpers import QUICKSTART, ROOT, TINY_OPTS, copypaste_ap, tiny_env, untrained_weights


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Four small built-in images in COCO format."""
    out = tmp_path_factory.mktemp("coco")
    json_file = generate_synthetic_coco(str(out), "val", 4, seed=3, min_size=128, max_size=160)
    return json_file, os.path.join(out, "val")


def write_voc_copy(json_file: str, image_dir: str, voc_dir: str, split: str = "test") -> None:
    """A Pascal VOC copy of a COCO dataset, by fcos_d2's writer (JPEGImages, Annotations with
    1-based inclusive integer boxes, ImageSets/Main/<split>.txt)."""
    dicts = load_coco_json(json_file, image_dir, "fcos_test_voc_source")
    write_voc_dataset(dicts, SYNTH_CLASSES, voc_dir, split)


def _cfg(output_dir):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def _evaluate_ground_truth(evaluator, dicts, jitter=None):
    """Run ``evaluator`` on the dataset's own boxes as detections (score 1 - 0.01 i)."""
    evaluator.reset()
    for d in dicts:
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if jitter is not None:
            boxes = jitter(boxes)
        n = len(boxes)
        inst = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(boxes),
            scores=1 - 0.01 * torch.arange(n, dtype=torch.float32),
            pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]).long(),
        )
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()


def test_pascal_voc_dataset_gets_the_voc_evaluator(coco, tmp_path):
    voc_dir = str(tmp_path / "voc")
    write_voc_copy(*coco, voc_dir)
    name = "fcos_test_voc_oracle"
    register_pascal_voc(name, voc_dir, "test", 2007, list(SYNTH_CLASSES))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"  # as Detectron2's builtin.py
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    dicts = DatasetCatalog.get(name)  # Detectron2 0.6's loader (np.str) on numpy 2
    assert len(dicts) == 4 and all(d["file_name"].endswith(".jpg") for d in dicts)
    # The ground truth itself as detections: VOC AP 100 at every IoU threshold.
    results = _evaluate_ground_truth(evaluator, dicts)
    assert results["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


def test_voc_evaluation_through_train_net_eval_only(coco, tmp_path):
    voc_dir = str(tmp_path / "voc")
    write_voc_copy(*coco, voc_dir)
    weights = untrained_weights(tmp_path / "untrained.pth")
    # train_net.py's main, after registering the VOC copy with Detectron2's register_pascal_voc.
    script = f"""
import sys
sys.path.insert(0, {ROOT!r})
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
import train_net
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.engine import argument_parser
register_pascal_voc("fcos_voc_test", {voc_dir!r}, "test", 2007, list(SYNTH_CLASSES))
MetadataCatalog.get("fcos_voc_test").evaluator_type = "pascal_voc"
train_net.main(argument_parser().parse_args(sys.argv[1:]))
"""
    args = [
        "--config-file",
        QUICKSTART,
        "--eval-only",
        "MODEL.WEIGHTS",
        str(weights),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATASETS.TEST",
        "('fcos_voc_test',)",
        *TINY_OPTS,
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.0",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=tiny_env(tmp_path / "cache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Evaluating fcos_voc_test using 2007 metric" in proc.stdout
    ap = copypaste_ap(proc.stdout)
    assert ap is not None and set(ap) == {"AP", "AP50", "AP75"}
    assert all(0.0 <= v <= 100.0 for v in ap.values())


def _lvis_json(coco_json: str, out_file: str) -> str:
    """An LVIS-format copy of a COCO json (every class frequent, exhaustively annotated)."""
    with open(coco_json) as f:
        data = json.load(f)
    for im in data["images"]:
        im.update(
            coco_url=f"http://images/val/{im['file_name']}",
            neg_category_ids=[],
            not_exhaustive_category_ids=[],
        )
    for c in data["categories"]:
        c.update(frequency="f", synonyms=[c["name"]], image_count=1, instance_count=1)
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    with open(out_file, "w") as f:
        json.dump(data, f)
    return out_file


def test_lvis_dataset_gets_the_lvis_evaluator(coco, tmp_path):
    lvis_json = _lvis_json(coco[0], str(tmp_path / "lvis_val.json"))
    name = "fcos_test_lvis"
    image_root = os.path.dirname(coco[1]) + os.sep  # LVIS: image_root + "val/<file>"
    register_lvis_instances(name, {"thing_classes": list(SYNTH_CLASSES)}, lvis_json, image_root)
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, LVISEvaluator)
    # lvis 0.5.3 on numpy 2 (np.float), through fcos_d2.compat: ground truth as detections.
    dicts = load_lvis_json(lvis_json, image_root)
    assert os.path.isfile(dicts[0]["file_name"])
    results = _evaluate_ground_truth(evaluator, dicts)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP50"] == pytest.approx(100.0)


def test_other_dataset_types_are_an_error(tmp_path):
    name = "fcos_test_semseg"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).evaluator_type = "sem_seg"
    with pytest.raises(InputError, match="fcos_test_semseg.*'sem_seg'.*coco, lvis, pascal_voc"):
        Trainer.build_evaluator(_cfg(tmp_path), name)


def test_dataset_without_type_is_evaluated_as_coco(tmp_path):
    name = "fcos_test_untyped"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).thing_classes = ["a"]
    assert isinstance(Trainer.build_evaluator(_cfg(tmp_path), name), PRCurveCOCOEvaluator)


def test_dataset_without_json_is_converted_afresh_for_each_run(tmp_path):
    # Detectron2's COCOEvaluator reuses <output>/<name>_coco_format.json of an earlier run,
    # even after the dataset changed; build_evaluator converts the dataset again.
    name = "fcos_test_reconverted"
    box = [10.0, 10.0, 20.0, 20.0]
    record = {"file_name": "a.jpg", "image_id": 1, "height": 50, "width": 50}
    anno = {"bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    DatasetCatalog.register(name, lambda: [{**record, "annotations": [{**anno, "bbox": box}]}])
    json_files = []
    for new_box in (None, [5.0, 5.0, 30.0, 40.0]):
        if new_box:  # a later run (a new process: metadata without json_file), new boxes
            box[:] = new_box
            MetadataCatalog.remove(name)
        MetadataCatalog.get(name).thing_classes = ["a"]
        Trainer.build_evaluator(_cfg(tmp_path), name)
        json_files.append(MetadataCatalog.get(name).json_file)
        with open(json_files[-1]) as f:
            (converted,) = json.load(f)["annotations"]
        assert converted["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    assert (
        json_files[0] == json_files[1] == str(tmp_path / "inference" / f"{name}_coco_format.json")
    )


def test_coco_evaluation_draws_pr_curves_of_its_ap(coco, tmp_path):
    name = "fcos_test_coco_pr"
    register_coco_instances(name, {}, coco[0], coco[1])
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), name, str(tmp_path / "eval"))
    assert isinstance(evaluator, PRCurveCOCOEvaluator)
    g = torch.Generator().manual_seed(0)

    def jitter(boxes):  # shift each box by up to 15% of its size: some fail IoU 0.75
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        return boxes + (torch.rand(boxes.shape, generator=g) - 0.5) * 0.3 * wh

    results = _evaluate_ground_truth(evaluator, DatasetCatalog.get(name), jitter)["bbox"]
    png = tmp_path / "eval" / "pr_curves_bbox.png"
    assert evaluator.pr_curves_file == str(png) and png.is_file()
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] > image.shape[0] > 300  # two panels
    assert 0 < results["AP75"] < results["AP50"] <= 100
    # The drawn "all classes" curves are COCO's: their means are its AP50 and AP75. The
    # precision array is recomputed here with pycocotools from the evaluator's outputs.
    coco_gt = COCO(coco[0])
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
