"""Sections 5 and 7: COCO evaluation, pycocotools against the fastest COCOeval available, on
the built-in val set and on a generated set of COCO val2017's size."""

import contextlib
import copy
import json
import os
import tempfile
import time
from typing import Dict, List

from fcos_d2 import compat

from .common import Context, tiny_builtin_dataset
from .registry import section


def coco_eval_section(json_file: str) -> Dict[str, object]:
    """pycocotools vs the fastest available COCOeval on the COCO json ``json_file`` with
    jittered ground truth as detections (identical AP)."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(json_file)
    # Detections: ground truth jittered, plus false positives, with random scores.
    rng = np.random.default_rng(0)
    dets = []
    for ann in gt.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):
            jit = rng.normal(0, 0.1, 4) * [w, h, w, h]
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                    "score": float(rng.random()),
                }
            )
    dt = gt.loadRes(dets)
    backends = {"pycocotools": COCOeval}
    fast = compat.fast_cocoeval_class()
    if fast is not None:
        backends[fast.__module__ + "." + fast.__name__] = fast
    out = {}
    for name, cls in backends.items():
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            start = time.perf_counter()
            ev = cls(gt, copy.deepcopy(dt), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
        print(f"  {name}: {seconds:.2f} s, AP {ev.stats[0]:.4f}")
    return out


def coco_size_ground_truth(num_images: int = 5000, num_classes: int = 80, seed: int = 0) -> dict:
    """
    A COCO-format validation set shaped like COCO val2017 (annotations only, no pixels):
    640x480 / 480x640 / 500x375 images, a geometric number of boxes per image (mean
    ~7.3, ~36k boxes for 5000 images, some images empty), box sides log-uniform in
    [4, 500] px (about 43% small, 23% medium, 34% large), aspect ratios in [1/3, 3],
    1% crowd boxes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (500, 375)]
    images, annos = [], []
    for i in range(num_images):
        w, h = sizes[int(rng.integers(len(sizes)))]
        images.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i + 1:012d}.jpg"})
        n = int(rng.geometric(1 / 8.3)) - 1
        side = np.exp(rng.uniform(np.log(4), np.log(500), n))
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
        bw = np.minimum(side * np.sqrt(aspect), w - 1)
        bh = np.minimum(side / np.sqrt(aspect), h - 1)
        x = rng.uniform(0, w - bw)
        y = rng.uniform(0, h - bh)
        cats = rng.integers(1, num_classes + 1, n)
        crowd = rng.random(n) < 0.01
        for k in range(n):
            box = [float(x[k]), float(y[k]), float(bw[k]), float(bh[k])]
            annos.append(
                {
                    "id": len(annos) + 1,
                    "image_id": i + 1,
                    "category_id": int(cats[k]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(crowd[k]),
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annos, "categories": cats}


def coco_size_detections(gt: dict, per_image: int = 100, seed: int = 0) -> List[dict]:
    """
    Detections of a fair detector, ``per_image`` per image as Detectron2's
    TEST.DETECTIONS_PER_IMAGE: 1-2 jittered copies of 80% of the objects (a tenth with
    another class), the rest random boxes; scores higher for better boxes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    num_classes = len(gt["categories"])
    by_image: Dict[int, List[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    dets = []
    for img in gt["images"]:
        w, h = img["width"], img["height"]
        out = []
        for ann in by_image.get(img["id"], []):
            if rng.random() > 0.8:
                continue
            x, y, bw, bh = ann["bbox"]
            for _ in range(int(rng.integers(1, 3))):
                noise = rng.normal(0, 0.15, 4)
                box = [
                    x + noise[0] * bw,
                    y + noise[1] * bh,
                    bw * np.exp(noise[2]),
                    bh * np.exp(noise[3]),
                ]
                cat = ann["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 81))
                score = float(np.clip(1 - np.abs(noise).mean() * 3 + rng.normal(0, 0.1), 0.05, 1))
                out.append((cat, box, score))
        while len(out) < per_image:
            bw, bh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(400), 2)), [w - 1, h - 1])
            box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]
            out.append((int(rng.integers(1, num_classes + 1)), box, float(rng.uniform(0.05, 0.5))))
        out.sort(key=lambda d: -d[2])
        for cat, box, score in out[:per_image]:
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "score": score,
                }
            )
    return dets


def _per_category_ap(ev) -> List[float]:
    """AP per category from COCOeval's precision array, as Detectron2's COCOEvaluator does."""
    import numpy as np

    precision = ev.eval["precision"]  # (iou, recall, class, area, max dets)
    aps = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        aps.append(float(np.mean(p)) * 100 if p.size else float("nan"))
    return aps


def coco_size_eval_section(num_images: int = 5000) -> Dict[str, object]:
    """
    COCOEvaluator's evaluation (loadRes, evaluate, accumulate, summarize: Detectron2's
    _evaluate_predictions_on_coco) of a COCO-size validation set with pycocotools and with
    the fast backend compat.fast_cocoeval_class() finds, in one process; their 12 COCO
    metrics and per-category APs compared.
    """
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = coco_size_ground_truth(num_images)
    dets = coco_size_detections(gt_dict)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "val.json")
        with open(path, "w") as f:
            json.dump(gt_dict, f)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            gt = COCO(path)
    out: Dict[str, object] = {
        "images": num_images,
        "classes": len(gt_dict["categories"]),
        "boxes": len(gt_dict["annotations"]),
        "detections": len(dets),
    }
    print(f"  {num_images} images, {out['boxes']} boxes, {out['detections']} detections")
    backends = {"pycocotools": COCOeval}
    fast = compat.fast_cocoeval_class()
    if fast is not None:
        backends[fast.__module__.split(".")[0] + "." + fast.__name__] = fast
    evals = {}
    for name, cls in backends.items():
        row = {}
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            t0 = time.perf_counter()
            dt = gt.loadRes(copy.deepcopy(dets))
            t1 = time.perf_counter()
            ev = cls(gt, dt, "bbox")
            ev.evaluate()
            t2 = time.perf_counter()
            ev.accumulate()
            t3 = time.perf_counter()
            ev.summarize()
            t4 = time.perf_counter()
        row = {
            "load_res_s": t1 - t0,
            "evaluate_s": t2 - t1,
            "accumulate_s": t3 - t2,
            "summarize_s": t4 - t3,
            "evaluate_accumulate_s": t3 - t1,
            "stats": [float(v) for v in ev.stats],
        }
        evals[name] = ev
        out[name] = row
        print(
            f"  {name}: evaluate {row['evaluate_s']:.2f} s + accumulate "
            f"{row['accumulate_s']:.2f} s = {row['evaluate_accumulate_s']:.2f} s; "
            f"AP {100 * ev.stats[0]:.2f}"
        )
    if len(evals) == 2:
        (ref, slow), (fast_name, quick) = list(evals.items())
        out["fast_backend"] = fast_name
        out["max_abs_stat_diff"] = float(np.max(np.abs(np.array(slow.stats) - quick.stats)))
        out["max_abs_per_category_ap_diff"] = float(
            np.nanmax(np.abs(np.array(_per_category_ap(slow)) - np.array(_per_category_ap(quick))))
        )
        out["speedup"] = out[ref]["evaluate_accumulate_s"] / out[fast_name]["evaluate_accumulate_s"]
        print(
            f"  {fast_name} / pycocotools: {out['speedup']:.1f}x faster; 12 metrics differ by "
            f"at most {out['max_abs_stat_diff']:.1e}, per-category AP by "
            f"{out['max_abs_per_category_ap_diff']:.1e} (AP points)"
        )
    return out


@section("coco", "5", "COCO evaluation on fcos_synth_val", key="coco_eval")
def run_builtin(ctx: Context) -> Dict[str, object]:
    """COCO evaluation time on the built-in val set: pycocotools vs the fastest backend."""
    if ctx.smoke:
        with tiny_builtin_dataset(4) as (_, json_file):
            return coco_eval_section(json_file)
    from fcos_d2.data import ensure_builtin_dataset

    return coco_eval_section(ensure_builtin_dataset("fcos_synth_val"))


@section(
    "cocosize",
    "7",
    "COCO evaluation at COCO size (generated: 80 classes, 100 detections per image)",
    key="coco_size_eval",
)
def run_coco_size(ctx: Context) -> Dict[str, object]:
    """
    COCO evaluation at COCO size (generated: --coco-size-images images, 5000 by default, 80
    classes, ~36k boxes, 100 detections per image): pycocotools against the fast backend,
    same 12 metrics.
    """
    return coco_size_eval_section(50 if ctx.smoke else ctx.coco_size_images)
