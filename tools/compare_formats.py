#!/usr/bin/env python
"""
The same weights on the COCO, Pascal VOC and YOLO copies of one evaluation set: COCO AP of
each copy (Detectron2's COCOEvaluator; for VOC and YOLO it converts the loaded dicts to
COCO json) and the VOC evaluator's own AP on the VOC copy.

    python tools/compare_formats.py --config-file configs/quickstart_fp32.yaml \\
        --out output/formats MODEL.WEIGHTS output/quickstart_fp32/model_final.pth

The copies are written from the config's first DATASETS.TEST (default: the built-in val
set) by fcos_d2.data.export_formats, as tools/export_dataset.py writes them, and read back
by train_net.py's loaders (fcos_d2.data.voc, fcos_d2.data.yolo). Where they differ:
VOC stores integer 1-based corners (a box moves by up to 0.5 px a side) and JPEG pixels
(non-JPEG images are re-encoded); YOLO stores normalised centres and sizes with 6
decimals (1e-6 of the image side) and the image files as they are. A second VOC row
scores the detections of the original images against the VOC boxes, to separate the two
causes. Prints one table and writes OUT/formats.json.
"""

import argparse
import json
import os
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, inference_on_dataset  # noqa: E402

import fcos_d2  # noqa: E402, F401  (registers the built-in datasets)
from fcos_d2.config import get_fcos_cfg  # noqa: E402
from fcos_d2.data.export_formats import export_stems, write_voc_dataset, write_yolo_dataset  # noqa: E402
from fcos_d2.data.voc import register_voc_dataset  # noqa: E402
from fcos_d2.data.yolo import register_yolo_dataset  # noqa: E402
from fcos_d2.engine import Trainer  # noqa: E402
from fcos_d2.errors import InputError  # noqa: E402


def write_copies(source: str, out: str) -> Dict[str, str]:
    """Write registered dataset ``source`` as VOC (split "val") and YOLO folders under
    ``out`` and register them; returns {"coco": source, "voc": name, "yolo": name}."""
    dicts = DatasetCatalog.get(source)
    names = list(MetadataCatalog.get(source).thing_classes)
    voc_dir, yolo_dir = os.path.join(out, "voc"), os.path.join(out, "yolo")
    write_voc_dataset(dicts, names, voc_dir, "val")
    write_yolo_dataset(dicts, names, yolo_dir)
    register_voc_dataset(f"{source}_as_voc", voc_dir, "val", names)
    register_yolo_dataset(f"{source}_as_yolo", yolo_dir, names)
    return {"coco": source, "voc": f"{source}_as_voc", "yolo": f"{source}_as_yolo"}


def coco_evaluator(name: str, out: str) -> COCOEvaluator:
    """Detectron2's COCOEvaluator of ``name`` with pycocotools (one implementation for all
    copies), its converted COCO json under ``out``."""
    return COCOEvaluator(name, output_dir=os.path.join(out, name), use_fast_impl=False)


def _stems(name: str) -> List[str]:
    return [os.path.splitext(os.path.basename(d["file_name"]))[0] for d in DatasetCatalog.get(name)]


class _Keep(DatasetEvaluator):
    """Keeps each image's outputs by file stem."""

    def __init__(self):
        self.outputs: Dict[str, dict] = {}

    def reset(self):
        self.outputs = {}

    def process(self, inputs, outputs):
        for i, o in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(i["file_name"]))[0]
            self.outputs[stem] = {"instances": o["instances"].to("cpu")}

    def evaluate(self):
        return {}


def score(evaluator, outputs: Dict[str, dict], name: str) -> Dict[str, float]:
    """``evaluator``'s bbox metrics of per-image ``outputs`` (keyed by file stem) on
    dataset ``name``, whose images are matched by stem."""
    evaluator.reset()
    for d, stem in zip(DatasetCatalog.get(name), _stems(name)):
        evaluator.process([{"image_id": d["image_id"]}], [outputs[stem]])
    return evaluator.evaluate()["bbox"]


def main(argv=None) -> Dict[str, Dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--out", default="output/formats", help="copies, converted json, formats.json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    cfg = get_fcos_cfg(args.config_file, args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    source = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "fcos_synth_val"
    if export_stems(DatasetCatalog.get(source)) != _stems(source):
        raise InputError(f"{source}: two images share a file stem; copies cannot be matched")
    copies = write_copies(source, args.out)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    outputs: Dict[str, Dict[str, dict]] = {}
    for fmt, name in copies.items():  # the model on each copy's own image files
        keep = _Keep()
        inference_on_dataset(model, Trainer.build_test_loader(cfg, name), keep)
        outputs[fmt] = keep.outputs
    results = {
        f"{fmt}: COCO AP": score(coco_evaluator(name, args.out), outputs[fmt], name)
        for fmt, name in copies.items()
    }
    voc = copies["voc"]
    # The original images' detections against the VOC copy's boxes: the corners' share.
    results["voc boxes, original pixels: COCO AP"] = score(
        coco_evaluator(voc, os.path.join(args.out, "original_pixels")), outputs["coco"], voc
    )
    voc_eval = Trainer.build_evaluator(cfg, voc)  # PascalVOCDetectionEvaluator
    results["voc: VOC evaluator"] = score(voc_eval, outputs["voc"], voc)

    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    print("| copy | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row, r in results.items():
        print(f"| {row} | " + " | ".join(f"{r[k]:.2f}" if k in r else "" for k in keys) + " |")
    with open(os.path.join(args.out, "formats.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"compare_formats.py: error: {e}", file=sys.stderr)
        sys.exit(2)
