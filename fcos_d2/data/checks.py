"""
Checks of Detectron2 dataset dicts before training: what cannot be trained on is an error
that names the file and image; what Detectron2 users expect to be tolerated (degenerate,
out-of-image and crowd boxes, images without boxes) is fixed or skipped, counted and
logged. The dataset files themselves are never modified.
"""

import copy
import logging
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode

from ..errors import InputError

__all__ = ["CheckedDatasetMapper", "DatasetReport", "check_files", "sanitize_dataset_dicts"]

logger = logging.getLogger(__name__)
_MAX_EXAMPLES = 5


@dataclass
class DatasetReport:
    """What :func:`sanitize_dataset_dicts` found (counts, plus a few examples each)."""

    images: int = 0
    images_without_boxes: int = 0
    boxes: int = 0
    crowd_boxes: int = 0
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def note(self, kind: str, text: str) -> None:
        shown = self.examples.setdefault(kind, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(text)

    def summary(self) -> str:
        lines = [
            f"{self.images} images, {self.boxes} boxes kept; {self.dropped_boxes} degenerate "
            f"boxes dropped, {self.clipped_boxes} clipped to their image, {self.crowd_boxes} "
            f"crowd boxes ignored, {self.images_without_boxes} images without boxes"
        ]
        for kind, shown in self.examples.items():
            lines.extend(f"  {kind}: {text}" for text in shown)
        return "\n".join(lines)


def _where(record: Dict[str, Any]) -> str:
    return f"{record.get('file_name', '?')} (image id {record.get('image_id', '?')})"


def check_files(dicts: List[Dict[str, Any]], dataset: str = "dataset") -> None:
    """Raise InputError listing image files of ``dicts`` that do not exist."""
    missing = [r for r in dicts if not os.path.isfile(r.get("file_name", ""))]
    if missing:
        shown = "\n  ".join(_where(r) for r in missing[:_MAX_EXAMPLES])
        raise InputError(f"{len(missing)} image file(s) of {dataset} not found, e.g.:\n  {shown}")


_DROPPED_DEGENERATE = "dropped (NaN/inf or zero/negative width or height)"
_DROPPED_OUTSIDE = "dropped (outside the image)"
_CLIPPED = "clipped to the image"
_FAST_MODES = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


def _xyxy(record: Dict[str, Any], index: int, anno: Dict[str, Any]) -> Tuple[float, ...]:
    """An annotation's box as float (x0, y0, x1, y1)."""
    mode = anno.get("bbox_mode", BoxMode.XYXY_ABS)
    try:
        box = anno["bbox"]
        if mode in _FAST_MODES and len(box) == 4:
            x0, y0, a, b = (float(v) for v in box)
            return (x0, y0, a, b) if mode == BoxMode.XYXY_ABS else (x0, y0, x0 + a, y0 + b)
        return tuple(float(v) for v in BoxMode.convert(list(box), mode, BoxMode.XYXY_ABS))
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise InputError(f"{_where(record)}: annotation {index} has no valid 'bbox': {e}") from e


def _from_xyxy(box: np.ndarray, mode: Any) -> List[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    if mode == BoxMode.XYXY_ABS:
        return [x0, y0, x1, y1]
    if mode == BoxMode.XYWH_ABS:
        return [x0, y0, x1 - x0, y1 - y0]
    return BoxMode.convert([x0, y0, x1, y1], BoxMode.XYXY_ABS, mode)


def sanitize_dataset_dicts(
    dicts: List[Dict[str, Any]], num_classes: int, dataset: str = "dataset"
) -> Tuple[List[Dict[str, Any]], DatasetReport]:
    """
    Check and fix Detectron2 dataset dicts for detection training.

    Errors (InputError, naming file, image id and annotation): missing image files,
    class ids outside [0, num_classes), annotations without a valid bbox.
    Fixed, counted and logged: boxes with NaN/inf coordinates, zero or negative width or
    height, or entirely outside the image are dropped; boxes partly outside are clipped;
    crowd boxes are counted (Detectron2's mapper ignores them); images left without boxes
    are counted (and kept: Detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS decides).
    The boxes are checked together (one array of all of them), in float64.

    Returns:
        new list of dicts (records that changed are copies) and a DatasetReport.
    """
    check_files(dicts, dataset)
    report = DatasetReport(images=len(dicts))
    # One pass over the annotations: class ids (errors in order), crowd boxes, and the
    # (record, annotation, x0, y0, x1, y1) of every other box.
    rec_ids: List[int] = []
    ann_ids: List[int] = []
    boxes: List[Tuple[float, ...]] = []
    for r, record in enumerate(dicts):
        for index, anno in enumerate(record.get("annotations", ())):
            cat = anno.get("category_id")
            if not isinstance(cat, numbers.Integral) or not 0 <= cat < num_classes:
                raise InputError(
                    f"{_where(record)}: annotation {index} has class id {cat!r} outside "
                    f"[0, {num_classes}) (MODEL.FCOS.NUM_CLASSES = {num_classes})"
                )
            if anno.get("iscrowd", 0):
                report.crowd_boxes += 1
                continue
            rec_ids.append(r)
            ann_ids.append(index)
            boxes.append(_xyxy(record, index, anno))
    rec = np.asarray(rec_ids, dtype=np.int64)
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = np.array(
        [
            [
                np.nan if d.get("width") is None else d["width"],
                np.nan if d.get("height") is None else d["height"],
            ]
            for d in dicts
        ],
        dtype=np.float64,
    ).reshape(-1, 2)[rec]
    with np.errstate(invalid="ignore"):
        good = np.isfinite(xyxy).all(1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        sized = ~np.isnan(size).any(1) & good
        clip = xyxy.copy()
        clip[:, :2] = np.maximum(xyxy[:, :2], 0.0)
        clip[:, 2:] = np.minimum(xyxy[:, 2:], size)
        clip[~sized] = xyxy[~sized]
        outside = sized & ((clip[:, 2] <= clip[:, 0]) | (clip[:, 3] <= clip[:, 1]))
        clipped = sized & ~outside & (clip != xyxy).any(1)
    dropped = ~good | outside
    report.dropped_boxes = int(dropped.sum())
    report.clipped_boxes = int(clipped.sum())
    report.boxes = int((~dropped).sum())
    kept_per_image = np.bincount(rec[~dropped], minlength=len(dicts))
    report.images_without_boxes = int((kept_per_image == 0).sum())
    # A few examples of each kind, the kinds in the order they first occur.
    kinds = [(_DROPPED_DEGENERATE, ~good), (_DROPPED_OUTSIDE, outside), (_CLIPPED, clipped)]
    found = [(np.flatnonzero(mask)[:_MAX_EXAMPLES], kind) for kind, mask in kinds]
    for idx, kind in sorted((f for f in found if len(f[0])), key=lambda f: f[0][0]):
        for i in idx:
            record = dicts[rec[i]]
            anno = record["annotations"][ann_ids[i]]
            report.note(kind, f"{_where(record)} annotation {ann_ids[i]} box {list(anno['bbox'])}")
    # Copies of the records that change: dropped boxes left out, clipped ones replaced.
    out = list(dicts)
    changes: Dict[int, Dict[int, Any]] = {}
    for i in np.flatnonzero(dropped | clipped):
        changes.setdefault(int(rec[i]), {})[ann_ids[i]] = None if dropped[i] else clip[i]
    for r, changed in changes.items():
        record = copy.copy(dicts[r])
        annos = []
        for index, anno in enumerate(record.get("annotations", ())):
            if index not in changed:
                annos.append(anno)
            elif changed[index] is not None:
                anno = dict(anno)
                anno["bbox"] = _from_xyxy(changed[index], anno.get("bbox_mode", BoxMode.XYXY_ABS))
                annos.append(anno)
        record["annotations"] = annos
        out[r] = record
    logger.info(f"Checked {dataset}: {report.summary()}")
    return out, report


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper whose errors name the image file and id."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            raise InputError(f"{_where(dataset_dict)}: {type(e).__name__}: {e}") from e
