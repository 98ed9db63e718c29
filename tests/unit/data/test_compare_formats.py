"""tools/compare_formats.py: the COCO, VOC and YOLO copies of one dataset score the same
detections alike (what the tool measures with a model, here with fixed detections)."""

import os
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, BoxMode, Instances

from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import compare_formats  # noqa: E402


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    json_file = generate_synthetic_coco(str(base / "coco"), "val", 6, seed=5, min_size=160)
    name = "fcos_test_formats_source"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, str(base / "coco" / "val"))
    DatasetCatalog.get(name)  # sets thing_classes
    assert MetadataCatalog.get(name).thing_classes == list(SYNTH_CLASSES)
    return compare_formats.write_copies(name, str(base / "copies")), base


def _detections(name: str) -> dict:
    """Each image's ground truth, shrunk about its centre by 2-14% (IoU 0.74-0.96 with its
    box, so that the strict IoU thresholds split them), one wrong-class box per image."""
    outputs = {}
    for d in DatasetCatalog.get(name):
        boxes = torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        ).reshape(-1, 4)
        n = len(boxes)
        shrink = 0.02 + 0.12 * torch.arange(n) / max(n - 1, 1)
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        half = size * (1 - shrink[:, None]) / 2
        det = torch.cat([torch.cat([centre - half, centre + half], 1), boxes[:1]])
        classes = [a["category_id"] for a in d["annotations"]]
        inst = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(det),
            scores=torch.linspace(0.9, 0.1, n + 1),
            pred_classes=torch.tensor(classes + [(classes[0] + 1) % 5]),
        )
        outputs[os.path.splitext(os.path.basename(d["file_name"]))[0]] = {"instances": inst}
    return outputs


def test_copies_score_the_same_detections_alike(copies):
    names, base = copies
    outputs = _detections(names["coco"])
    ap = {
        fmt: compare_formats.score(
            compare_formats.coco_evaluator(name, str(base / "eval")), outputs, name
        )
        for fmt, name in names.items()
    }
    assert 30 < ap["coco"]["AP"] < 95  # the strict thresholds miss some boxes
    for fmt in ("voc", "yolo"):
        for key in ("AP", "AP50", "AP75"):
            assert ap[fmt][key] == pytest.approx(ap["coco"][key], abs=0.1), (fmt, key)
    # The copies' images are the same images: YOLO's files as they are, VOC's as JPEG.
    assert [len(DatasetCatalog.get(n)) for n in names.values()] == [6, 6, 6]
