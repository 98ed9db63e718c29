"""The evaluator of each dataset type (COCO, LVIS, Pascal VOC); the PR-curve COCO evaluator
itself: tests/unit/evaluation/test_pr_curves.py."""

import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_coco_json,
    load_lvis_json,
    register_lvis_instances,
    register_pascal_voc,
)
from detectron2.evaluation import LVISEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import BoxMode

import fcos_d2
from fcos_d2 import InputError
from fcos_d2.data.builtin import SYNTH_CLASSES
from fcos_d2.data.export_formats import write_voc_dataset
from fcos_d2.engine import Trainer
from fcos_d2.evaluation import PRCurveCOCOEvaluator
from helpers import evaluate_ground_truth


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


def test_pascal_voc_dataset_gets_the_voc_evaluator(coco_val4, tmp_path):
    voc_dir = str(tmp_path / "voc")
    write_voc_copy(*coco_val4, voc_dir)
    name = "fcos_test_voc_oracle"
    register_pascal_voc(name, voc_dir, "test", 2007, list(SYNTH_CLASSES))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"  # as Detectron2's builtin.py
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    dicts = DatasetCatalog.get(name)  # Detectron2 0.6's loader (np.str) on numpy 2
    assert len(dicts) == 4 and all(d["file_name"].endswith(".jpg") for d in dicts)
    # The ground truth itself as detections: VOC AP 100 at every IoU threshold.
    results = evaluate_ground_truth(evaluator, dicts)
    assert results["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


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


def test_lvis_dataset_gets_the_lvis_evaluator(coco_val4, tmp_path):
    lvis_json = _lvis_json(coco_val4[0], str(tmp_path / "lvis_val.json"))
    name = "fcos_test_lvis"
    image_root = os.path.dirname(coco_val4[1]) + os.sep  # LVIS: image_root + "val/<file>"
    register_lvis_instances(name, {"thing_classes": list(SYNTH_CLASSES)}, lvis_json, image_root)
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, LVISEvaluator)
    # lvis 0.5.3 on numpy 2 (np.float), through fcos_d2.compat: ground truth as detections.
    dicts = load_lvis_json(lvis_json, image_root)
    assert os.path.isfile(dicts[0]["file_name"])
    results = evaluate_ground_truth(evaluator, dicts)
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
