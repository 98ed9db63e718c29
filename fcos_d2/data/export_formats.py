"""
Writers of Detectron2 dataset dicts as Pascal VOC and YOLO folders (read back by
Detectron2's ``load_voc_instances`` and :func:`fcos_d2.data.yolo.load_yolo_dataset`);
``tools/export_dataset.py`` runs them on registered datasets.
"""

from __future__ import annotations

import logging
import os
import shutil
import xml.etree.ElementTree as ET
from typing import Any, Sequence

import cv2
import numpy as np
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import InputError

__all__ = ["FORMATS", "export_dataset", "export_stems", "write_voc_dataset", "write_yolo_dataset"]

logger = logging.getLogger(__name__)

#: Formats :func:`export_dataset` writes.
FORMATS = ("voc", "yolo")


def _boxes(dicts: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(image index, category id, XYXY_ABS float64 box) of every non-crowd annotation of
    ``dicts``, and the number of crowd annotations left out."""
    image_of, classes, boxes, modes = [], [], [], []
    crowd = 0
    for i, d in enumerate(dicts):
        for a in d.get("annotations", ()):
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            image_of.append(i)
            classes.append(int(a["category_id"]))
            boxes.append([float(v) for v in a["bbox"]])
            modes.append(int(a.get("bbox_mode", BoxMode.XYXY_ABS)))
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mode_arr = np.asarray(modes, dtype=np.int64)
    for mode in np.unique(mode_arr):
        sel = mode_arr == mode
        xyxy[sel] = BoxMode.convert(xyxy[sel], BoxMode(int(mode)), BoxMode.XYXY_ABS)
    return np.asarray(image_of, dtype=np.int64), np.asarray(classes, dtype=np.int64), xyxy, crowd


def _per_image(num_images: int, image_of: np.ndarray, items: Sequence[Any]) -> list[list[Any]]:
    grouped: list[list[Any]] = [[] for _ in range(num_images)]
    for i, item in zip(image_of.tolist(), items):
        grouped[i].append(item)
    return grouped


def export_stems(dicts: Sequence[dict[str, Any]]) -> list[str]:
    """File stems of the images of ``dicts`` in an exported folder: each image's own stem,
    or, where two images share one, every stem prefixed by the image's index."""
    stems = [os.path.splitext(os.path.basename(d["file_name"]))[0] for d in dicts]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:06d}_{s}" for i, s in enumerate(stems)]


def _log_crowd(crowd: int, out_dir: str) -> None:
    if crowd:
        logger.info(f"{out_dir}: {crowd} crowd boxes left out (the format has none)")


def write_yolo_dataset(
    dicts: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    out_dir: str,
    decimals: int = 6,
) -> str:
    """
    Write Detectron2 dataset dicts as a YOLO folder: ``images/`` (copies of the image files),
    ``labels/<stem>.txt`` (one "class cx cy w h" line a box, normalised by the image size,
    ``decimals`` decimals; an empty file for an image without boxes) and ``data.yaml``
    (nc, names). Crowd boxes are left out. Returns ``out_dir``.
    """
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    image_of, classes, xyxy, crowd = _boxes(dicts)
    wh = np.array([[d["width"], d["height"]] for d in dicts], dtype=np.float64).reshape(-1, 2)
    norm = xyxy / np.tile(wh[image_of], 2)
    cxcywh = np.concatenate([(norm[:, :2] + norm[:, 2:]) / 2, norm[:, 2:] - norm[:, :2]], axis=1)
    lines = [
        f"{c} " + " ".join(f"{v:.{decimals}f}" for v in row)
        for c, row in zip(classes.tolist(), cxcywh.tolist())
    ]
    for d, stem, image_lines in zip(
        dicts, export_stems(dicts), _per_image(len(dicts), image_of, lines)
    ):
        ext = os.path.splitext(d["file_name"])[1]
        shutil.copyfile(d["file_name"], os.path.join(out_dir, "images", stem + ext))
        with open(os.path.join(out_dir, "labels", stem + ".txt"), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in image_lines))
    with open(os.path.join(out_dir, "data.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"nc": len(class_names), "names": list(class_names)}, f, sort_keys=False)
    _log_crowd(crowd, out_dir)
    return out_dir


def _voc_xml(
    d: dict[str, Any], file_name: str, objects: list[tuple[str, list[int]]], depth: int
) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", d["width"]), ("height", d["height"]), ("depth", depth)):
        ET.SubElement(size, key).text = str(value)
    for name, corners in objects:
        obj = ET.SubElement(root, "object")
        for key, value in (("name", name), ("pose", "Unspecified"), ("truncated", 0)):
            ET.SubElement(obj, key).text = str(value)
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
            ET.SubElement(box, key).text = str(value)
    return root


def _jpeg_params(quality: int) -> list[int]:
    # Full-resolution colour (4:4:4): OpenCV's default 4:2:0 halves the chroma resolution,
    # which cost the quickstart model 3.2 AP on the built-in val set (tools/compare_formats.py).
    return [
        cv2.IMWRITE_JPEG_QUALITY,
        quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]


def write_voc_dataset(
    dicts: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    out_dir: str,
    split: str,
    jpeg_quality: int = 95,
) -> str:
    """
    Write Detectron2 dataset dicts as a Pascal VOC folder: ``JPEGImages/<stem>.jpg`` (JPEG
    files copied, others re-encoded at ``jpeg_quality`` with full-resolution colour, 4:4:4),
    ``Annotations/<stem>.xml`` and
    ``ImageSets/Main/<split>.txt`` (other splits' lists in the folder are kept). Corners are
    VOC's 1-based inclusive pixel indices: a box (x0, y0, x1, y1) in pixels is written
    ``round(x0) + 1, round(y0) + 1, round(x1), round(y1)``, which Detectron2's loader reads
    back as ``round(x0), round(y0), round(x1), round(y1)``. Crowd boxes are left out.
    Returns ``out_dir``.
    """
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    image_of, classes, xyxy, crowd = _boxes(dicts)
    corners = np.rint(xyxy).astype(np.int64) + np.array([1, 1, 0, 0])
    objects = [(class_names[c], box) for c, box in zip(classes.tolist(), corners.tolist())]
    stems = export_stems(dicts)
    for d, stem, image_objects in zip(dicts, stems, _per_image(len(dicts), image_of, objects)):
        target = os.path.join(out_dir, "JPEGImages", stem + ".jpg")
        if os.path.splitext(d["file_name"])[1].lower() in (".jpg", ".jpeg"):
            shutil.copyfile(d["file_name"], target)
            depth = 3
        else:
            image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"{d['file_name']}: cannot read the image")
            if not cv2.imwrite(target, image, _jpeg_params(jpeg_quality)):
                raise OSError(f"could not write {target}")
            depth = image.shape[2]
        tree = ET.ElementTree(_voc_xml(d, stem + ".jpg", image_objects, depth))
        tree.write(os.path.join(out_dir, "Annotations", stem + ".xml"), encoding="utf-8")
    with open(os.path.join(out_dir, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("".join(s + "\n" for s in stems))
    _log_crowd(crowd, out_dir)
    return out_dir


def export_dataset(name: str, fmt: str, out_dir: str, split: str | None = None) -> str:
    """
    Write registered dataset ``name`` (its DatasetCatalog dicts, its metadata's
    thing_classes) to ``out_dir`` in format ``fmt`` ("voc": split ``split``, default the
    part of ``name`` after its last "_"; "yolo"). Returns ``out_dir``.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if name not in DatasetCatalog.list():
        raise InputError(f"dataset {name!r} is not registered")
    dicts = DatasetCatalog.get(name)
    class_names = MetadataCatalog.get(name).get("thing_classes")
    if not class_names:
        raise InputError(f"dataset {name!r} has no thing_classes in its metadata")
    if fmt == "yolo":
        return write_yolo_dataset(dicts, class_names, out_dir)
    return write_voc_dataset(dicts, class_names, out_dir, split or name.rsplit("_", 1)[-1])
