"""
Per-class score thresholds for deployment: for each class, the score threshold whose
detections have the highest F1 at IoU 0.5 on an evaluated dataset; saved as JSON, loaded
by the predictors (``fcos_d2.predictor``) and ``tools/demo.py``.
"""

import contextlib
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.structures import Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import InputError

__all__ = [
    "ScoreThresholds",
    "apply_score_thresholds",
    "f1_optimal_thresholds",
    "load_class_thresholds",
    "save_class_thresholds",
]

#: A global threshold, per-class thresholds (None: the class is never kept), or the path
#: of a JSON file written by :func:`save_class_thresholds`.
ScoreThresholds = Union[float, Sequence[Optional[float]], str]


def _best_f1(scores: np.ndarray, matched: np.ndarray, num_gt: int) -> Dict:
    """The threshold (a detection score) maximising F1 of the detections scored >= it."""
    order = np.argsort(-scores, kind="mergesort")
    scores, matched = scores[order], matched[order]
    tp = np.cumsum(matched)
    kept = np.arange(1, len(scores) + 1)
    f1 = 2 * tp / np.maximum(kept + num_gt, 1)
    # A threshold keeps every detection with an equal score: cut only after the last of them.
    valid = np.append(scores[1:] != scores[:-1], True) if len(scores) else np.zeros(0, bool)
    f1 = np.where(valid, f1, -1.0)
    best = {"threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    if len(scores) and f1.max() > 0:
        i = int(np.argmax(f1))  # the first maximum: the highest such threshold
        best = {
            "threshold": float(scores[i]),
            "f1": float(f1[i]),
            "precision": float(tp[i] / kept[i]),
            "recall": float(tp[i] / num_gt),
        }
    return best


def f1_optimal_thresholds(
    coco_gt: COCO, detections: List[Dict], *, iou: float = 0.5, max_dets: int = 100
) -> List[Dict]:
    """
    For each category of ``coco_gt`` (in increasing id order, i.e. Detectron2's contiguous
    class order), the score threshold that maximises F1 at IoU ``iou``.

    Detections are matched to ground truth as COCOeval matches them (per image and class,
    highest score first, each to the unmatched box of highest IoU >= ``iou``; crowd boxes
    neither count nor penalise; at most ``max_dets`` per image and class). Greedy matching
    in score order does not depend on lower-scored detections, so keeping the detections
    scored >= t keeps exactly their matches: F1(t) = 2 TP / (2 TP + FP + FN) follows from
    cumulative counts, and the best t is one of the scores.

    Args:
        coco_gt: ground truth; detections: COCO results (image_id, category_id, bbox
            [x, y, w, h], score), e.g. Detectron2's ``coco_instances_results.json``.

    Returns:
        per category: {"category_id", "name", "threshold" (None when no threshold gives a
        true positive), "f1", "precision", "recall", "num_gt", "num_detections"}.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    scores: Dict[int, List[np.ndarray]] = {c: [] for c in cat_ids}
    matched: Dict[int, List[np.ndarray]] = {c: [] for c in cat_ids}
    # Ground truth that counts: not crowd, not marked "ignore" (COCOeval's rule).
    num_gt = {
        c: sum(
            1
            for a in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[c]))
            if not (a.get("iscrowd", 0) or a.get("ignore", 0))
        )
        for c in cat_ids
    }
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_dt = coco_gt.loadRes(list(detections))
            ev = COCOeval(coco_gt, coco_dt, "bbox")
            ev.params.iouThrs = np.array([iou])
            ev.params.maxDets = [max_dets]
            ev.params.areaRng = [[0.0, 1e10]]
            ev.params.areaRngLbl = ["all"]
            ev.evaluate()
        for e in ev.evalImgs:
            if e is None:
                continue
            keep = ~np.asarray(e["dtIgnore"][0], dtype=bool)
            scores[e["category_id"]].append(np.asarray(e["dtScores"], dtype=np.float64)[keep])
            matched[e["category_id"]].append(np.asarray(e["dtMatches"][0])[keep] > 0)
    results = []
    for c in cat_ids:
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        m = np.concatenate(matched[c]) if matched[c] else np.zeros(0, bool)
        results.append(
            {
                "category_id": c,
                "name": coco_gt.cats[c]["name"],
                **_best_f1(s, m, num_gt[c]),
                "num_gt": num_gt[c],
                "num_detections": int(len(s)),
            }
        )
    return results


def save_class_thresholds(path: str, per_class: List[Dict], **info) -> None:
    """Write :func:`f1_optimal_thresholds`' output (and ``info``) as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**info, "classes": per_class}, f, indent=2)


def load_class_thresholds(path: str, class_names: Optional[Sequence[str]] = None) -> List[float]:
    """
    Per-class thresholds (contiguous class order) from a JSON file of
    :func:`save_class_thresholds`; ``inf`` for a class that is never kept. With
    ``class_names``, the file's classes must be these, in this order.
    """
    if not os.path.isfile(path):
        raise InputError(f"class thresholds file not found: {path}")
    try:
        with open(path) as f:
            classes = json.load(f)["classes"]
        thresholds = [
            math.inf if c["threshold"] is None else float(c["threshold"]) for c in classes
        ]
        names = [c.get("name") for c in classes]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"{path}: not a class thresholds file (tools/class_thresholds.py writes them): {e!r}"
        ) from e
    if class_names is not None and list(class_names) != names:
        raise InputError(
            f"{path}: thresholds are for classes {names}, the model's are {list(class_names)}"
        )
    return thresholds


def apply_score_thresholds(
    instances: Instances, thresholds: Union[float, torch.Tensor]
) -> Instances:
    """
    The detections of ``instances`` whose score is >= the threshold: one float, or a (C,)
    tensor of per-class thresholds indexed by ``pred_classes`` (``inf``: never kept).
    """
    if isinstance(thresholds, torch.Tensor):
        limit = thresholds.to(instances.scores.device)[instances.pred_classes]
    else:
        limit = thresholds
    return instances[instances.scores >= limit]
