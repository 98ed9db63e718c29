"""
Checks of Detectron2 dataset dicts before training: what cannot be trained on is an error
that names the file and image; what Detectron2 users expect to be tolerated (degenerate,
out-of-image and crowd boxes, images without boxes) is fixed or skipped, counted and
logged. The dataset files themselves are never modified.
"""

import copy
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

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


def _check_box(
    record: Dict[str, Any], index: int, anno: Dict[str, Any], report: DatasetReport
) -> Tuple[bool, Dict[str, Any]]:
    """(keep, annotation) for one non-crowd annotation; clipped boxes are copies."""
    mode = anno.get("bbox_mode", BoxMode.XYXY_ABS)
    try:
        x0, y0, x1, y1 = (
            float(v) for v in BoxMode.convert(list(anno["bbox"]), mode, BoxMode.XYXY_ABS)
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{_where(record)}: annotation {index} has no valid 'bbox': {e}") from e
    where = f"{_where(record)} annotation {index} box {list(anno['bbox'])}"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        report.dropped_boxes += 1
        report.note("dropped (NaN/inf or zero/negative width or height)", where)
        return False, anno
    w, h = record.get("width"), record.get("height")
    if w is None or h is None:
        return True, anno
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if cx1 <= cx0 or cy1 <= cy0:
        report.dropped_boxes += 1
        report.note("dropped (outside the image)", where)
        return False, anno
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        report.clipped_boxes += 1
        report.note("clipped to the image", where)
        anno = dict(anno)
        anno["bbox"] = BoxMode.convert([cx0, cy0, cx1, cy1], BoxMode.XYXY_ABS, mode)
    return True, anno


def sanitize_dataset_dicts(
    dicts: List[Dict[str, Any]], num_classes: int, dataset: str = "dataset"
) -> Tuple[List[Dict[str, Any]], DatasetReport]:
    """
    Check and fix Detectron2 dataset dicts for detection training.

    Errors (InputError, naming file, image id and annotation): missing image files,
    class ids outside [0, num_classes), annotations without a bbox.
    Fixed, counted and logged: boxes with NaN/inf coordinates, zero or negative width or
    height, or entirely outside the image are dropped; boxes partly outside are clipped;
    crowd boxes are counted (Detectron2's mapper ignores them); images left without boxes
    are counted (and kept: Detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS decides).

    Returns:
        new list of dicts (records that changed are copies) and a DatasetReport.
    """
    check_files(dicts, dataset)
    report = DatasetReport(images=len(dicts))
    out = []
    for record in dicts:
        annos = record.get("annotations", [])
        kept, changed = [], False
        for index, anno in enumerate(annos):
            cat = anno.get("category_id")
            if not isinstance(cat, numbers.Integral) or not 0 <= cat < num_classes:
                raise InputError(
                    f"{_where(record)}: annotation {index} has class id {cat!r} outside "
                    f"[0, {num_classes}) (MODEL.FCOS.NUM_CLASSES = {num_classes})"
                )
            if anno.get("iscrowd", 0):
                report.crowd_boxes += 1
                kept.append(anno)
                continue
            keep, fixed = _check_box(record, index, anno, report)
            changed |= (not keep) or fixed is not anno
            if keep:
                kept.append(fixed)
        report.boxes += sum(1 for a in kept if not a.get("iscrowd", 0))
        if not any(not a.get("iscrowd", 0) for a in kept):
            report.images_without_boxes += 1
        if changed:
            record = copy.copy(record)
            record["annotations"] = kept
        out.append(record)
    logger.info(f"Checked {dataset}: {report.summary()}")
    return out, report


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper whose errors name the image file and id."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            raise InputError(f"{_where(dataset_dict)}: {type(e).__name__}: {e}") from e
