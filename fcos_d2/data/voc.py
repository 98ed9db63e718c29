"""
Pascal VOC-format folders (``Annotations/``, ``ImageSets/Main/<split>.txt``,
``JPEGImages/``) as Detectron2 datasets, through Detectron2's ``load_voc_instances``, with
the class names read from the annotations when not given.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

from ..errors import InputError

__all__ = ["register_voc_dataset", "voc_class_names", "voc_image_ids", "voc_year"]


def voc_image_ids(dirname: str, split: str) -> list[str]:
    """The image ids listed in ``dirname/ImageSets/Main/<split>.txt``."""
    path = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(path):
        raise InputError(f"VOC split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise InputError(f"VOC split file {path} lists no images")
    return ids


def voc_class_names(dirname: str, split: str) -> list[str]:
    """The sorted, distinct ``<object><name>`` of the split's ``Annotations/<id>.xml``."""
    names = set()
    for image_id in voc_image_ids(dirname, split):
        path = os.path.join(dirname, "Annotations", image_id + ".xml")
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            raise InputError(f"VOC annotation {path}: {e}") from e
        for index, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise InputError(f"VOC annotation {path}: object {index} has no <name>")
            names.add(name)
    if not names:
        raise InputError(f"the annotations of VOC split {dirname} {split} name no objects")
    return sorted(names)


def voc_year(dirname: str) -> int:
    """2007 (the 11-point AP of VOC2007) where the folder's name says 2007, else 2012
    (area under the precision-recall curve), as Detectron2's builtin.py chooses it."""
    return 2007 if "2007" in os.path.basename(os.path.normpath(dirname)) else 2012


def _unknown_name(dirname: str, split: str, class_names: Sequence[str]) -> str | None:
    """Where the split first names a class outside ``class_names``: the file, the object's
    index and its name; None if nowhere."""
    for image_id in voc_image_ids(dirname, split):
        path = os.path.join(dirname, "Annotations", image_id + ".xml")
        for index, obj in enumerate(ET.parse(path).getroot().iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in class_names:
                names = list(class_names)
                return f"{path}: object {index} is a {name!r}, not one of the class names {names}"
    return None


def _load(dirname: str, split: str, class_names: list[str]) -> list[dict[str, Any]]:
    try:
        return load_voc_instances(dirname, split, class_names)
    except ValueError as e:  # class_names.index(name) of a name not in the list
        raise InputError(
            f"VOC split {dirname} {split}: {_unknown_name(dirname, split, class_names) or e}"
        ) from e
    except (OSError, ET.ParseError) as e:
        raise InputError(f"VOC split {dirname} {split}: {e}") from e


def register_voc_dataset(
    name: str, dirname: str, split: str, class_names: Sequence[str] | None = None
) -> list[str]:
    """
    Register VOC split ``split`` of ``dirname`` as ``name`` with Detectron2's loader (boxes
    ``xmin - 1, ymin - 1, xmax, ymax``), metadata as ``register_pascal_voc`` sets it (year
    from :func:`voc_year`) and evaluator_type "pascal_voc". ``class_names`` default to
    :func:`voc_class_names`. An earlier ``name`` is replaced. Returns the class names.
    """
    voc_image_ids(dirname, split)  # the split file exists and lists images
    names = list(class_names) if class_names else voc_class_names(dirname, split)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: _load(dirname, split, names))
    MetadataCatalog.get(name).set(
        thing_classes=names,
        dirname=dirname,
        year=voc_year(dirname),
        split=split,
        evaluator_type="pascal_voc",
    )
    return names
