#!/usr/bin/env python
"""
Sliced (SAHI) against whole-image inference on large images with small objects: COCO AP,
AP of small objects, recall and time per image.

    python tools/sliced_benchmark.py --config-file configs/quickstart.yaml \
        --weights output/quickstart/model_final.pth --images 8 --slice 352 352 --overlap 0.2

The images are mosaics of the built-in generator's images (fcos_d2/data/builtin.py, seed
777, not a training seed) at their native scale: a 6x6 grid of 256-333 px cells gives
2000x2000 px images with 8-300 px objects, which the whole-image path shrinks by the test
resize (quickstart: short side 352, so x0.176: a 20 px object becomes 3.5 px, below the P3
stride), while 352 px slices run at the scale the model was trained at.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402

import fcos_d2  # noqa: E402, F401
from fcos_d2.config import get_fcos_cfg  # noqa: E402
from fcos_d2.data.builtin import SYNTH_CLASSES, render_synthetic_image  # noqa: E402
from fcos_d2.slicing import sahi_detection_model, sliced_predict  # noqa: E402

SEED = 777


def make_mosaic(index: int, size: int = 2000, grid: int = 6) -> Tuple[np.ndarray, List[Dict]]:
    """Image ``index``: a ``grid`` x ``grid`` mosaic of built-in images at native scale in a
    ``size`` x ``size`` BGR uint8 canvas, and its objects as COCO annotations (XYWH)."""
    cell = size // grid
    canvas = np.full((size, size, 3), 127, dtype=np.uint8)
    anns = []
    for k in range(grid * grid):
        img, objects = render_synthetic_image(SEED, index * grid * grid + k, 256, cell)
        y0, x0 = (k // grid) * cell, (k % grid) * cell
        h, w = img.shape[:2]
        canvas[y0 : y0 + h, x0 : x0 + w] = img
        for obj in objects:
            x, y, bw, bh = obj.bbox
            anns.append(
                {
                    "bbox": [x0 + x, y0 + y, bw, bh],
                    "category_id": obj.category_id,
                    "area": float(bw * bh),
                    "iscrowd": 0,
                }
            )
    return canvas, anns


def _coco_eval(gt: Dict, dets: List[Dict]) -> Dict[str, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(dets) if dets else COCO()
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a: None)
    ev.params.maxDets = [10, 100, 1000]  # ~230 objects per image
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats
    return {"AP": 100 * s[0], "AP50": 100 * s[1], "APs": 100 * s[3], "AR1000": 100 * s[8]}


def _to_coco(instances, image_id: int) -> List[Dict]:
    boxes = instances.pred_boxes.tensor.numpy()
    out = []
    for (x1, y1, x2, y2), s, c in zip(boxes, instances.scores.tolist(), instances.pred_classes):
        box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
        out.append({"image_id": image_id, "bbox": box, "score": s, "category_id": int(c) + 1})
    return out


def _recall(gt_anns: List[Dict], dets: List[Dict], score: float = 0.3) -> float:
    """Share of objects matched (IoU >= 0.5, same class) by a detection scored >= score."""
    if not gt_anns:
        return float("nan")
    g = np.array([a["bbox"] for a in gt_anns], dtype=np.float64).reshape(-1, 4)
    gc = np.array([a["category_id"] for a in gt_anns])
    keep = [d for d in dets if d["score"] >= score]
    d = np.array([k["bbox"] for k in keep], dtype=np.float64).reshape(-1, 4)
    dc = np.array([k["category_id"] for k in keep])
    if len(d) == 0:
        return 0.0
    ix = np.clip(
        np.minimum(g[:, None, 0] + g[:, None, 2], d[None, :, 0] + d[None, :, 2])
        - np.maximum(g[:, None, 0], d[None, :, 0]),
        0,
        None,
    )
    iy = np.clip(
        np.minimum(g[:, None, 1] + g[:, None, 3], d[None, :, 1] + d[None, :, 3])
        - np.maximum(g[:, None, 1], d[None, :, 1]),
        0,
        None,
    )
    inter = ix * iy
    union = g[:, None, 2] * g[:, None, 3] + d[None, :, 2] * d[None, :, 3] - inter
    hit = (inter / union >= 0.5) & (gc[:, None] == dc[None, :])
    return float(hit.any(axis=1).mean())


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "quickstart.yaml"))
    p.add_argument("--weights", default=os.path.join(ROOT, "output/quickstart/model_final.pth"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--slice", type=int, nargs=2, default=(352, 352), metavar=("H", "W"))
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--output", help="write the figures as json here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = p.parse_args(argv)

    cfg = get_fcos_cfg(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.DETECTIONS_PER_IMAGE = 1000  # the whole image holds ~230 objects
    predictor = DefaultPredictor(cfg)
    sahi_model = sahi_detection_model(cfg, confidence_threshold=cfg.MODEL.FCOS.SCORE_THRESH_TEST)

    images, anns = [], []
    for i in range(args.images):
        img, objs = make_mosaic(i, args.size)
        images.append(img)
        for a in objs:
            anns.append({**a, "id": len(anns) + 1, "image_id": i})
    gt = {
        "images": [{"id": i, "height": args.size, "width": args.size} for i in range(len(images))],
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(SYNTH_CLASSES)],
    }
    small = [a for a in anns if max(a["bbox"][2:]) <= 32]
    print(
        f"{len(images)} images {args.size}x{args.size}, {len(anns)} objects "
        f"({len(small)} with a long side <= 32 px)"
    )

    native = cfg.clone()
    native.INPUT.MIN_SIZE_TEST = native.INPUT.MAX_SIZE_TEST = args.size
    native_predictor = DefaultPredictor(native)
    methods = {
        "whole image": lambda img: predictor(img)["instances"].to("cpu"),
        f"whole image at {args.size} px": lambda img: native_predictor(img)["instances"].to("cpu"),
        f"SAHI {args.slice[0]}x{args.slice[1]} overlap {args.overlap} + whole": lambda img: (
            sliced_predict(sahi_model, img, args.slice, args.overlap)
        ),
        f"SAHI {args.slice[0]}x{args.slice[1]} overlap {args.overlap}, slices only": lambda img: (
            sliced_predict(sahi_model, img, args.slice, args.overlap, full_image=False)
        ),
    }
    rows = {}
    for name, run in methods.items():
        run(images[0])  # warm-up
        dets, seconds = [], 0.0
        for i, img in enumerate(images):
            t = time.perf_counter()
            inst = run(img)
            seconds += time.perf_counter() - t
            dets += _to_coco(inst, i)
        m = _coco_eval(gt, dets)
        m["recall@0.3"] = 100 * _recall(anns, dets)
        m["recall_small@0.3"] = 100 * _recall(small, dets)
        m["s/img"] = seconds / len(images)
        rows[name] = m
        print(
            f"{name:45s} "
            + "  ".join(f"{k} {v:.1f}" if k != "s/img" else f"{k} {v:.2f}" for k, v in m.items()),
            flush=True,
        )
    result = {
        "config": args.config_file,
        "weights": args.weights,
        "images": len(images),
        "size": args.size,
        "objects": len(anns),
        "small_objects": len(small),
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
