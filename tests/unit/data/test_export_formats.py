"""Writers of dataset dicts as VOC and YOLO folders: the files' exact contents."""

import importlib.util
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from fcos_d2 import InputError
from fcos_d2.data.export_formats import (
    export_dataset,
    export_stems,
    write_voc_dataset,
    write_yolo_dataset,
)
from helpers import ROOT


@pytest.fixture
def dicts(tmp_path):
    """Two 200 x 100 images (PNG, JPEG) with hand-placed boxes, one of them crowd."""
    out = []
    for i, ext in enumerate((".png", ".jpg")):
        path = str(tmp_path / "src" / f"im{i}{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.full((100, 200, 3), 40 * (i + 1), np.uint8))
        out.append({"file_name": path, "image_id": i + 1, "height": 100, "width": 200})
    out[0]["annotations"] = [
        {"bbox": [10.4, 20.6, 50.5, 40.5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
        {"bbox": [0, 0, 200, 100], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        {"bbox": [5, 5, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1},
    ]
    out[1]["annotations"] = []
    return out


def test_voc_corners_are_1_based_inclusive_integers(dicts, tmp_path):
    voc = write_voc_dataset(dicts, ["cat", "dog"], str(tmp_path / "voc"), "trainval")
    assert (tmp_path / "voc/ImageSets/Main/trainval.txt").read_text() == "im0\nim1\n"
    root = ET.parse(os.path.join(voc, "Annotations", "im0.xml")).getroot()
    assert root.findtext("filename") == "im0.jpg"
    assert [root.findtext(f"size/{k}") for k in ("width", "height", "depth")] == ["200", "100", "3"]
    objects = [
        (
            o.findtext("name"),
            [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")],
        )
        for o in root.iter("object")
    ]
    # (10.4, 20.6, 50.5, 40.5) -> pixels 10..50 x 21..40 (round half to even) -> 1-based xmin,
    # ymin; the whole image (0, 0, 200, 100) -> (1, 1, 200, 100); the crowd box is left out.
    assert objects == [("dog", [11, 22, 50, 40]), ("cat", [1, 1, 200, 100])]
    assert [o.findtext("difficult") for o in root.iter("object")] == ["0", "0"]
    assert ET.parse(os.path.join(voc, "Annotations", "im1.xml")).getroot().find("object") is None
    for stem in ("im0", "im1"):  # the PNG re-encoded, the JPEG copied: both real JPEGs
        image = cv2.imread(os.path.join(voc, "JPEGImages", stem + ".jpg"))
        assert image.shape == (100, 200, 3)
        with open(os.path.join(voc, "JPEGImages", stem + ".jpg"), "rb") as f:
            assert f.read(3) == b"\xff\xd8\xff"


def test_voc_reencoding_keeps_full_resolution_colour(tmp_path):
    """Columns alternating pure red and pure blue: 4:2:0 JPEG (OpenCV's default) averages
    each pair of columns' colour to purple, 4:4:4 keeps each column's own."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 0::2, 2] = 255  # red columns (BGR)
    image[:, 1::2, 0] = 255  # blue columns
    path = str(tmp_path / "stripes.png")
    cv2.imwrite(path, image)
    d = {"file_name": path, "image_id": 1, "height": 64, "width": 64, "annotations": []}
    voc = write_voc_dataset([d], ["cat"], str(tmp_path / "voc"), "val")
    decoded = cv2.imread(os.path.join(voc, "JPEGImages", "stripes.jpg")).astype(int)
    assert np.abs(decoded - image).mean() < 8
    subsampled = tmp_path / "420.jpg"
    cv2.imwrite(str(subsampled), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(cv2.imread(str(subsampled)).astype(int) - image).mean() > 40


def test_yolo_lines_are_normalised_centre_and_size(dicts, tmp_path):
    out = write_yolo_dataset(dicts, ["cat", "dog"], str(tmp_path / "yolo"), decimals=4)
    # (10.4, 20.6, 50.5, 40.5) on 200 x 100: centre (30.45, 30.55), size 40.1 x 19.9.
    assert (tmp_path / "yolo/labels/im0.txt").read_text() == (
        "1 0.1522 0.3055 0.2005 0.1990\n0 0.5000 0.5000 1.0000 1.0000\n"
    )
    assert (tmp_path / "yolo/labels/im1.txt").read_text() == ""
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["im0.png", "im1.jpg"]
    with (
        open(dicts[0]["file_name"], "rb") as a,
        open(os.path.join(out, "images/im0.png"), "rb") as b,
    ):
        assert a.read() == b.read()
    with open(os.path.join(out, "data.yaml")) as f:
        assert yaml.safe_load(f) == {"nc": 2, "names": ["cat", "dog"]}


def test_stems_shared_by_two_images_get_the_index():
    assert export_stems([{"file_name": "a/x.png"}, {"file_name": "b/y.png"}]) == ["x", "y"]
    assert export_stems([{"file_name": "a/x.png"}, {"file_name": "b/x.jpg"}]) == [
        "000000_x",
        "000001_x",
    ]


def test_export_dataset_writes_a_registered_dataset(dicts, tmp_path):
    name = "fcos_test_export_formats"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    with pytest.raises(InputError, match="no thing_classes"):
        export_dataset(name, "voc", str(tmp_path / "x"))
    MetadataCatalog.get(name).thing_classes = ["cat", "dog"]
    with pytest.raises(InputError, match="unknown format 'coco'"):
        export_dataset(name, "coco", str(tmp_path / "x"))
    with pytest.raises(InputError, match="not registered"):
        export_dataset("fcos_test_no_such_dataset", "voc", str(tmp_path / "x"))
    # The tool: VOC split from the name's last part.
    spec = importlib.util.spec_from_file_location(
        "export_dataset_tool", os.path.join(ROOT, "tools", "export_dataset.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (out,) = tool.main(["--format", "voc", "--dataset", name, "--out", str(tmp_path / "t")])
    assert out == str(tmp_path / "t" / name)
    assert os.listdir(os.path.join(out, "ImageSets", "Main")) == ["formats.txt"]
