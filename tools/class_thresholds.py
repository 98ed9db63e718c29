#!/usr/bin/env python
"""
Per-class score thresholds from an evaluation: for each class, the threshold whose
detections have the highest F1 at IoU 0.5, written as JSON for tools/demo.py
(--class-thresholds) and fcos_d2.predictor.Predictor / BatchPredictor (thresholds=FILE).

    python train_net.py --config-file configs/quickstart.yaml --eval-only \\
        MODEL.WEIGHTS output/quickstart/model_final.pth OUTPUT_DIR output/eval
    python tools/class_thresholds.py \\
        --results output/eval/inference/coco_instances_results.json \\
        --dataset fcos_synth_val --output output/eval/class_thresholds.json

The detections are those COCOEvaluator wrote (``coco_instances_results.json``); the
ground truth is a COCO json (--gt-json) or that of a registered dataset (--dataset).
"""

import argparse
import contextlib
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

import fcos_d2  # noqa: E402, F401  (registers the built-in datasets)
from fcos_d2.errors import InputError  # noqa: E402
from fcos_d2.evaluation import f1_optimal_thresholds, save_class_thresholds  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", required=True, help="COCO detections (coco_instances_results.json)")
    gt = p.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt-json", help="COCO ground truth json")
    gt.add_argument("--dataset", help="a registered dataset with a json_file (e.g. fcos_synth_val)")
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a true positive (0.5)")
    p.add_argument("--max-dets", type=int, default=100, help="detections per image and class")
    return p.parse_args(argv)


def ground_truth_json(args: argparse.Namespace) -> str:
    if args.gt_json:
        path = args.gt_json
    else:
        if args.dataset not in DatasetCatalog.list():
            raise InputError(f"--dataset {args.dataset} is not registered; give --gt-json")
        DatasetCatalog.get(args.dataset)  # built-in datasets are generated on first use
        path = MetadataCatalog.get(args.dataset).get("json_file")
        if not path:
            raise InputError(f"--dataset {args.dataset} has no json_file; give --gt-json")
    if not os.path.isfile(path):
        raise InputError(f"ground truth json not found: {path}")
    return path


def main(argv=None) -> list:
    args = parse_args(argv)
    gt_json = ground_truth_json(args)
    if not os.path.isfile(args.results):
        raise InputError(f"--results not found: {args.results}")
    with open(args.results) as f:
        try:
            detections = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{args.results} is not valid JSON: {e}") from e
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_json)
    per_class = f1_optimal_thresholds(coco_gt, detections, iou=args.iou, max_dets=args.max_dets)
    save_class_thresholds(
        args.output,
        per_class,
        iou=args.iou,
        results=os.path.abspath(args.results),
        ground_truth=os.path.abspath(gt_json),
    )
    print(f"{'class':<16} {'threshold':>9} {'F1':>6} {'prec.':>6} {'recall':>6} {'GT':>6}")
    for c in per_class:
        t = "never" if c["threshold"] is None else f"{c['threshold']:.4f}"
        print(
            f"{c['name']:<16} {t:>9} {c['f1']:6.3f} {c['precision']:6.3f} "
            f"{c['recall']:6.3f} {c['num_gt']:6d}"
        )
    never = [c["name"] for c in per_class if c["threshold"] is None]
    if never:
        print(f"warning: no threshold gives a true positive for {never}: never kept")
    print(f"Wrote {args.output}")
    return per_class


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"class_thresholds.py: error: {e}", file=sys.stderr)
        sys.exit(2)
