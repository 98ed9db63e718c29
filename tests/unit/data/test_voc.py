"""Pascal VOC folders: class names from the annotations, registration, built-in round trip."""

import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.evaluation import PascalVOCDetectionEvaluator

from fcos_d2 import InputError
from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco
from fcos_d2.data.export_formats import write_voc_dataset
from fcos_d2.data.voc import register_voc_dataset, voc_class_names, voc_year
from fcos_d2.engine import Trainer
from helpers import QUICKSTART, load_cfg


def _xml(*names):
    objects = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin>"
        "<xmax>5</xmax><ymax>9</ymax></bndbox></object>"
        for n in names
    )
    return f"<annotation><size><width>10</width><height>10</height></size>{objects}</annotation>"


def _voc_folder(root, splits, annotations):
    """A VOC folder of annotations only: ``splits`` name -> ids, ``annotations`` id -> names."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(root / sub, exist_ok=True)
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    for image_id, names in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(*names))
    return str(root)


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """Four built-in images as dataset dicts and their VOC export."""
    root = tmp_path_factory.mktemp("voc_builtin")
    json_file = generate_synthetic_coco(str(root), "val", 4, seed=4, min_size=96, max_size=160)
    dicts = load_coco_json(json_file, str(root / "val"), "fcos_test_voc_builtin")
    voc_dir = write_voc_dataset(dicts, SYNTH_CLASSES, str(root / "voc"), "val")
    return dicts, voc_dir


def test_class_names_are_the_splits_sorted_distinct_names(tmp_path):
    voc = _voc_folder(
        tmp_path,
        {"train": ["a", "b"], "test": ["c"]},
        {"a": ["person", "car"], "b": ["car", "bird"], "c": ["zebra"]},
    )
    assert voc_class_names(voc, "train") == ["bird", "car", "person"]
    assert voc_class_names(voc, "test") == ["zebra"]
    with pytest.raises(InputError, match="VOC split file not found: .*val.txt"):
        voc_class_names(voc, "val")
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation><object></object></annotation>")
    with pytest.raises(InputError, match=r"b\.xml: object 0 has no <name>"):
        voc_class_names(voc, "train")
    os.remove(tmp_path / "Annotations" / "b.xml")
    with pytest.raises(InputError, match=r"b\.xml"):
        voc_class_names(voc, "train")


def test_exported_builtin_data_loads_back_with_detectron2(builtin):
    dicts, voc_dir = builtin
    loaded = load_voc_instances(voc_dir, "val", list(SYNTH_CLASSES))
    assert len(loaded) == len(dicts) == 4
    for a, b in zip(dicts, loaded):
        assert b["file_name"].endswith(".jpg") and os.path.isfile(b["file_name"])
        assert (a["height"], a["width"]) == (b["height"], b["width"])
        xywh = np.array([x["bbox"] for x in a["annotations"]]).reshape(-1, 4)
        want = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        got = np.array([x["bbox"] for x in b["annotations"]]).reshape(-1, 4)
        # The built-in boxes are whole pixels: VOC's integer corners keep them exactly
        # (any box would come back within 0.5 px, VOC's rounding).
        np.testing.assert_array_equal(got, want)
        assert [x["category_id"] for x in a["annotations"]] == [
            x["category_id"] for x in b["annotations"]
        ]


def test_registered_split_gets_the_voc_evaluator(builtin, tmp_path):
    _, voc_dir = builtin
    names = register_voc_dataset("fcos_test_voc_reg", voc_dir, "val")
    assert names == sorted(SYNTH_CLASSES)  # from the annotations
    meta = MetadataCatalog.get("fcos_test_voc_reg")
    assert (meta.evaluator_type, meta.split, meta.year, meta.dirname) == (
        "pascal_voc",
        "val",
        2012,
        voc_dir,
    )
    cfg = load_cfg(QUICKSTART)
    cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(
        Trainer.build_evaluator(cfg, "fcos_test_voc_reg"), PascalVOCDetectionEvaluator
    )
    dicts = DatasetCatalog.get("fcos_test_voc_reg")
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(range(5))
    # Names that miss one of the annotations' classes: an error naming it.
    register_voc_dataset("fcos_test_voc_reg", voc_dir, "val", ["disk", "ring"])
    with pytest.raises(InputError) as e:
        DatasetCatalog.get("fcos_test_voc_reg")
    pattern = (
        r"Annotations/(\w+)\.xml: object (\d+) is a '(rectangle|triangle|cross)', "
        r"not one of the class names \['disk', 'ring'\]"
    )
    found = re.search(pattern, str(e.value))
    assert found, str(e.value)
    xml = os.path.join(voc_dir, "Annotations", found.group(1) + ".xml")
    objects = list(ET.parse(xml).getroot().iter("object"))
    assert objects[int(found.group(2))].findtext("name") == found.group(3)


def test_year_is_2007_only_for_a_2007_folder():
    assert voc_year("/data/VOC2007") == 2007 and voc_year("/data/VOC2007/") == 2007
    assert voc_year("/data/VOC2012") == 2012 and voc_year("/data/2007/mine") == 2012
