"""
YOLO-format detection folders as Detectron2 datasets (written by export_formats.py).

Layout of a folder ``DIR`` (one split)::

    DIR/images/<rel>.<ext>      any image Pillow reads (jpg, png, bmp, tif, webp)
    DIR/labels/<rel>.txt        one box a line: "class cx cy w h", normalised to [0, 1]
    DIR/data.yaml               "names:" a list, or a dict {0: name, ...}; or
    DIR/classes.txt             one class name a line

An image without a label file is an image without objects. Boxes that leave [0, 1] by
more than :data:`CLIP_TOLERANCE` are clipped to their image, boxes left with zero width
or height are dropped (as ``sanitize_dataset_dicts`` does for COCO); both are counted in
one log line per dataset. Bad input raises InputError naming the file and line.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from ..errors import InputError

__all__ = [
    "CLIP_TOLERANCE",
    "IMAGE_EXTENSIONS",
    "load_yolo_dataset",
    "register_yolo_dataset",
    "yolo_class_names",
]

logger = logging.getLogger(__name__)

#: Image file extensions (lower case) looked for under ``DIR/images``.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

#: How far (in normalised units) a box may leave [0, 1] before it counts as clipped.
CLIP_TOLERANCE = 1e-3

_EXIF_ORIENTATION = 0x0112  # values 5-8 rotate by 90 degrees: width and height swap


def _names_from_yaml(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise InputError(f"{path} is not valid YAML: {e}") from e
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
            raise InputError(f"{path}: the keys of 'names' must be 0 to {len(keys) - 1}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise InputError(f"{path} has no 'names' list or dict of class names")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise InputError(f"{path}: nc is {nc} but 'names' has {len(names)} names")
    return [str(n) for n in names]


def _names_from_txt(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    for number, name in enumerate(names, 1):
        if not name:
            raise InputError(f"{path}, line {number}: empty class name")
    if not names:
        raise InputError(f"{path} has no class names")
    return names


def _names_file(dirname: str) -> str | None:
    for name in ("data.yaml", "classes.txt"):
        if os.path.isfile(os.path.join(dirname, name)):
            return os.path.join(dirname, name)
    return None


def yolo_class_names(dirname: str) -> list[str]:
    """Class names of a YOLO folder: ``data.yaml``'s ``names``, else ``classes.txt``."""
    path = _names_file(dirname)
    if path is None:
        raise InputError(f"no class names in {dirname}: write data.yaml ('names:') or classes.txt")
    return _names_from_yaml(path) if path.endswith(".yaml") else _names_from_txt(path)


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) as Detectron2's read_image sees the image (EXIF orientation applied),
    from the file's header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise InputError(f"{path}: cannot read the image: {e}") from e
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _parse_labels(path: str, num_classes: int, names_source: str) -> np.ndarray:
    """Rows (class, cx, cy, w, h, line number) of a label file, float64 (n, 6)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}, line {number}"
            if len(parts) != 5:
                raise InputError(
                    f"{where}: expected 5 numbers 'class cx cy w h', got {len(parts)}: "
                    f"{line.strip()!r}"
                )
            try:
                values = [float(p) for p in parts]
            except ValueError as e:
                raise InputError(f"{where}: not a number in {line.strip()!r}") from e
            if not all(np.isfinite(values)):
                raise InputError(f"{where}: not a finite number in {line.strip()!r}")
            cls = values[0]
            if cls != int(cls):
                raise InputError(f"{where}: class id {parts[0]!r} is not an integer")
            if not 0 <= cls < num_classes:
                raise InputError(
                    f"{where}: class id {int(cls)} outside the {num_classes} class names "
                    f"(0 to {num_classes - 1}) of {names_source}"
                )
            rows.append([*values, number])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _image_files(dirname: str) -> list[str]:
    """Image paths under ``dirname/images``, relative to it, sorted."""
    root = os.path.join(dirname, "images")
    if not os.path.isdir(root):
        raise InputError(f"YOLO folder {dirname} has no images/ folder")
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(folder, name), root))
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return sorted(found)


def load_yolo_dataset(
    dirname: str, class_names: Sequence[str] | None = None, dataset_name: str | None = None
) -> list[dict[str, Any]]:
    """
    Detectron2 dataset dicts of the YOLO folder ``dirname``: file_name, image_id (1, 2, ...
    in sorted path order), height, width and annotations (bbox in XYXY_ABS pixels, bbox_mode,
    0-based category_id). ``class_names`` default to the folder's (:func:`yolo_class_names`);
    ``dataset_name`` names the dataset in the log line.
    """
    names_source = "the given class names"
    if not class_names:
        class_names = yolo_class_names(dirname)
        names_source = str(_names_file(dirname))
    rel_paths = _image_files(dirname)
    image_paths = [os.path.join(dirname, "images", p) for p in rel_paths]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        sizes = np.array(list(pool.map(_image_size, image_paths)), dtype=np.float64)

    label_paths = [
        os.path.join(dirname, "labels", os.path.splitext(p)[0] + ".txt") for p in rel_paths
    ]
    per_image = [
        _parse_labels(p, len(class_names), names_source) if os.path.isfile(p) else np.zeros((0, 6))
        for p in label_paths
    ]
    rows = np.concatenate(per_image)
    image_of = np.repeat(np.arange(len(per_image)), [len(r) for r in per_image])
    # Normalised centre/size -> normalised corners -> clipped -> pixels, for all boxes at once.
    cxcy, wh = rows[:, 1:3], rows[:, 3:5]
    corners = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1)
    outside = ((corners < -CLIP_TOLERANCE) | (corners > 1 + CLIP_TOLERANCE)).any(axis=1)
    corners = np.clip(corners, 0.0, 1.0)
    hw = sizes[image_of]
    xyxy = corners * np.concatenate([hw[:, ::-1], hw[:, ::-1]], axis=1)
    degenerate = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    clipped = outside & ~degenerate
    keep = ~degenerate

    dicts: list[dict[str, Any]] = []
    for i, path in enumerate(image_paths):
        dicts.append(
            {
                "file_name": path,
                "image_id": i + 1,
                "height": int(sizes[i, 0]),
                "width": int(sizes[i, 1]),
                "annotations": [],
            }
        )
    for i, cls, box in zip(image_of[keep], rows[keep, 0].astype(int), xyxy[keep].tolist()):
        dicts[i]["annotations"].append(
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(cls)}
        )

    def example(mask: np.ndarray) -> str:
        j = int(np.flatnonzero(mask)[0])
        return f", e.g. {label_paths[image_of[j]]}, line {int(rows[j, 5])}"

    summary = (
        f"{len(dicts)} images, {int(keep.sum())} boxes kept; {int(degenerate.sum())} degenerate "
        f"boxes dropped{example(degenerate) if degenerate.any() else ''}, {int(clipped.sum())} "
        f"clipped to their image{example(clipped) if clipped.any() else ''}, "
        f"{sum(not d['annotations'] for d in dicts)} images without boxes"
    )
    logger.info(f"Loaded YOLO dataset {dataset_name or dirname} ({dirname}): {summary}")
    return dicts


def register_yolo_dataset(
    name: str, dirname: str, class_names: Sequence[str] | None = None
) -> list[str]:
    """
    Register the YOLO folder ``dirname`` as ``name`` (DatasetCatalog: loaded on first use;
    MetadataCatalog: thing_classes, evaluator_type "coco" (Detectron2's COCOEvaluator
    converts the dicts to COCO json), dirname). An earlier ``name`` is replaced. Returns the
    class names (``class_names``, else the folder's).
    """
    if not os.path.isdir(dirname):
        raise InputError(f"YOLO folder not found: {dirname}")
    names = list(class_names) if class_names else yolo_class_names(dirname)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_yolo_dataset(dirname, names, name))
    MetadataCatalog.get(name).set(thing_classes=names, evaluator_type="coco", dirname=dirname)
    return names
