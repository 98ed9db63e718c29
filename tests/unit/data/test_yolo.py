"""YOLO folders as Detectron2 datasets: conversion, bad input, clipping, round trip."""

import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from PIL import Image

from fcos_d2 import InputError
from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco
from fcos_d2.data.export_formats import write_yolo_dataset
from fcos_d2.data.yolo import load_yolo_dataset, register_yolo_dataset, yolo_class_names


def make_folder(root, labels, size=(100, 200), names="names: {0: cat, 1: dog}\n"):
    """A YOLO folder with one image (height, width = ``size``) per entry of ``labels``
    (stem -> label text, None: no label file); ``names``: data.yaml text."""
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "labels", exist_ok=True)
    for stem, text in labels.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.zeros((*size, 3), np.uint8))
        if text is not None:
            (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(names)
    return root


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def yolo_log():
    handler = _Records()
    log = logging.getLogger("fcos_d2.data.yolo")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.messages
    log.removeHandler(handler)
    log.setLevel(old_level)


def test_normalised_lines_become_pixel_corners(tmp_path):
    # 200 x 100 image: "1 0.5 0.25 0.2 0.1" is centre (100, 25), size 40 x 10.
    root = make_folder(tmp_path, {"a": "1 0.5 0.25 0.2 0.1\n\n0 0.1 0.9 0.1 0.2\n"})
    (d,) = load_yolo_dataset(str(root))
    assert d["file_name"] == str(root / "images" / "a.png")
    assert (d["image_id"], d["height"], d["width"]) == (1, 100, 200)
    assert [a["category_id"] for a in d["annotations"]] == [1, 0]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])
    boxes = np.array([a["bbox"] for a in d["annotations"]])
    np.testing.assert_allclose(boxes, [[80, 20, 120, 30], [10, 80, 30, 100]], atol=1e-9)


def test_class_names_from_data_yaml_list_or_dict_or_classes_txt(tmp_path):
    for sub, files in (
        ("list", {"data.yaml": "nc: 2\nnames: [cat, dog]\n"}),
        ("dict", {"data.yaml": "names:\n  1: dog\n  0: cat\n"}),
        ("txt", {"classes.txt": "cat\ndog\n\n"}),
    ):
        (tmp_path / sub).mkdir()
        for name, text in files.items():
            (tmp_path / sub / name).write_text(text)
        assert yolo_class_names(str(tmp_path / sub)) == ["cat", "dog"], sub
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="data.yaml.*classes.txt"):
        yolo_class_names(str(tmp_path / "none"))
    (tmp_path / "bad_nc" / "data.yaml").parent.mkdir()
    (tmp_path / "bad_nc" / "data.yaml").write_text("nc: 3\nnames: [cat, dog]\n")
    with pytest.raises(InputError, match="nc is 3 but 'names' has 2"):
        yolo_class_names(str(tmp_path / "bad_nc"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 0.5 0.5 0.1", "expected 5 numbers 'class cx cy w h', got 4"),
        ("1 0.5 0.5 0.1 0.1 0.9", "expected 5 numbers 'class cx cy w h', got 6"),
        ("1 0.5 0.5 0.1 0.1 0.2 0.3 0.4 0.5", "got 9"),  # a polygon line
        ("dog 0.5 0.5 0.1 0.1", "not a number"),
        ("1 0.5 nan 0.1 0.1", "not a finite number"),
        ("1.5 0.5 0.5 0.1 0.1", "class id '1.5' is not an integer"),
        ("2 0.5 0.5 0.1 0.1", "class id 2 outside the 2 class names .0 to 1. of .*data.yaml"),
        ("-1 0.5 0.5 0.1 0.1", "class id -1 outside the 2 class names"),
    ],
)
def test_bad_line_is_named_by_file_and_line(tmp_path, line, message):
    root = make_folder(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n\n" + line + "\n"})
    label = str(root / "labels" / "a.txt")
    with pytest.raises(InputError, match=message) as info:
        load_yolo_dataset(str(root))
    assert str(info.value).startswith(f"{label}, line 3: ")


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n", "b": None})
    (root / "images" / "b.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read the image") as info:
        load_yolo_dataset(str(root))
    assert str(info.value).startswith(str(root / "images" / "b.png") + ": ")


def test_image_without_label_file_is_an_empty_image(tmp_path):
    root = make_folder(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n", "b": None, "c": ""})
    dicts = load_yolo_dataset(str(root))
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.png", "b.png", "c.png"]
    assert [d["image_id"] for d in dicts] == [1, 2, 3]
    assert [len(d["annotations"]) for d in dicts] == [1, 0, 0]


def test_nested_image_folders_pair_with_nested_label_folders(tmp_path):
    root = make_folder(tmp_path, {})
    os.makedirs(root / "images" / "sub")
    os.makedirs(root / "labels" / "sub")
    cv2.imwrite(str(root / "images" / "sub" / "x.jpg"), np.zeros((50, 40, 3), np.uint8))
    (root / "labels" / "sub" / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (d,) = load_yolo_dataset(str(root))
    assert d["annotations"][0]["bbox"] == pytest.approx([10, 12.5, 30, 37.5])


def test_size_follows_exif_orientation_as_detectron2_reads_the_image(tmp_path):
    root = make_folder(tmp_path, {})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 60 x 30, shown 30 x 60
    Image.new("RGB", (60, 30)).save(root / "images" / "r.jpg", exif=exif)
    (d,) = load_yolo_dataset(str(root))
    assert (d["height"], d["width"]) == read_image(d["file_name"]).shape[:2] == (60, 30)


def test_out_of_image_boxes_are_clipped_and_counted(tmp_path, yolo_log):
    lines = [
        "0 0.95 0.5 0.2 0.2",  # x1 = 1.05: clipped to the image (170, 40, 200, 60)
        "0 0.5 0.5 1.001 0.2",  # 0.0005 past each side: within the tolerance, clipped silently
        "1 1.2 0.5 0.1 0.1",  # entirely right of the image: nothing left, dropped
        "1 0.5 0.5 0.0 0.1",  # zero width: dropped
    ]
    root = make_folder(tmp_path, {"a": "\n".join(lines) + "\n"})
    (d,) = load_yolo_dataset(str(root), dataset_name="yolo_clip")
    boxes = np.array([a["bbox"] for a in d["annotations"]])
    np.testing.assert_allclose(boxes, [[170, 40, 200, 60], [0, 40, 200, 60]], atol=1e-9)
    (message,) = [m for m in yolo_log if "yolo_clip" in m]
    label = str(root / "labels" / "a.txt")
    assert "1 images, 2 boxes kept; 2 degenerate boxes dropped" in message
    assert f"e.g. {label}, line 3" in message
    assert f"1 clipped to their image, e.g. {label}, line 1" in message


def test_registered_folder_is_evaluated_as_coco(tmp_path):
    root = make_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    assert register_yolo_dataset("fcos_test_yolo_reg", str(root)) == ["cat", "dog"]
    meta = MetadataCatalog.get("fcos_test_yolo_reg")
    assert meta.thing_classes == ["cat", "dog"] and meta.evaluator_type == "coco"
    assert DatasetCatalog.get("fcos_test_yolo_reg")[0]["annotations"][0]["category_id"] == 1
    # Registering the name again (another folder, given names) replaces it.
    other = make_folder(tmp_path / "other", {"b": None}, names=None)
    assert register_yolo_dataset("fcos_test_yolo_reg", str(other), ["x", "y"]) == ["x", "y"]
    assert DatasetCatalog.get("fcos_test_yolo_reg")[0]["annotations"] == []


def test_builtin_data_survives_export_and_load(tmp_path):
    json_file = generate_synthetic_coco(str(tmp_path), "val", 4, seed=2, min_size=96, max_size=160)
    builtin = load_coco_json(json_file, str(tmp_path / "val"), "fcos_test_yolo_round_trip")
    out = write_yolo_dataset(builtin, SYNTH_CLASSES, str(tmp_path / "yolo"))
    assert yolo_class_names(out) == list(SYNTH_CLASSES)
    loaded = load_yolo_dataset(out)
    assert len(loaded) == len(builtin) == 4
    for a, b in zip(builtin, loaded):
        assert os.path.basename(a["file_name"]) == os.path.basename(b["file_name"])
        assert (a["height"], a["width"]) == (b["height"], b["width"])
        xywh = np.array([x["bbox"] for x in a["annotations"]]).reshape(-1, 4)
        want = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        got = np.array([x["bbox"] for x in b["annotations"]]).reshape(-1, 4)
        # 6 decimals of cx, cy, w, h: each corner within 1e-6 of the image side.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(a["width"], a["height"]))
        assert [x["category_id"] for x in a["annotations"]] == [
            x["category_id"] for x in b["annotations"]
        ]
    assert sum(len(d["annotations"]) for d in loaded) > 10
