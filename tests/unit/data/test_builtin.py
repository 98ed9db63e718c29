"""Tests of the built-in synthetic dataset (fcos_d2/data/builtin.py). Fast: small counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fcos_d2.data import (
    SYNTH_CLASSES,
    builtin,
    default_cache_dir,
    ensure_builtin_dataset,
    generate_synthetic_coco,
    register_builtin_datasets,
    render_synthetic_image,
    synth_dataset_stats,
)

NUM_IMAGES = 40
SEED = 0
BUILTIN_NAMES = ("fcos_synth_train", "fcos_synth_val")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image split generated once for the property tests; returns its json path."""
    out = tmp_path_factory.mktemp("synth")
    return Path(generate_synthetic_coco(str(out), "train", NUM_IMAGES, SEED))


@pytest.fixture(scope="module")
def coco_dict(synth: Path) -> dict:
    return json.loads(synth.read_text())


@pytest.fixture
def isolated_catalog():
    """Unregister the built-in names for the test and restore the previous state after it."""
    saved = {}
    for name in BUILTIN_NAMES:
        saved[name] = (
            DatasetCatalog.data.get(name),
            MetadataCatalog.data.get(name),
            builtin._REGISTERED.pop(name, None),
        )
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
    yield
    for name, (func, meta, loc) in saved.items():
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
        builtin._REGISTERED.pop(name, None)
        if func is not None:
            DatasetCatalog.register(name, func)
        if meta is not None:
            MetadataCatalog.data[name] = meta
        if loc is not None:
            builtin._REGISTERED[name] = loc


def test_deterministic(tmp_path: Path) -> None:
    a = generate_synthetic_coco(str(tmp_path / "a"), "val", 8, 3)
    b = generate_synthetic_coco(str(tmp_path / "b"), "val", 8, 3)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    files = sorted(os.listdir(tmp_path / "a" / "val"))
    assert files == sorted(os.listdir(tmp_path / "b" / "val")) and len(files) == 8
    for f in files:
        assert (tmp_path / "a" / "val" / f).read_bytes() == (
            tmp_path / "b" / "val" / f
        ).read_bytes()
    # Nothing else (no temporary folders) is left behind.
    assert sorted(os.listdir(tmp_path / "a")) == ["val", "val.json"]
    # Another seed gives other images.
    c = generate_synthetic_coco(str(tmp_path / "c"), "val", 2, 4)
    assert Path(c).read_bytes() != Path(a).read_bytes()


def test_coco_json_loads(synth: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(synth))
    assert len(coco.getImgIds()) == NUM_IMAGES
    assert coco.getCatIds() == list(range(1, len(SYNTH_CLASSES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTH_CLASSES)
    for img in coco.loadImgs(coco.getImgIds()[:5]):
        pixels = cv2.imread(str(synth.parent / "train" / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        assert 256 <= img["height"] <= 384 and 256 <= img["width"] <= 384
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["iscrowd"] == 0
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
        assert all(isinstance(v, float) for v in ann["bbox"])


def test_boxes_inside_and_not_tiny(coco_dict: dict) -> None:
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco_dict["images"]}
    assert coco_dict["annotations"]
    for ann in coco_dict["annotations"]:
        x, y, w, h = ann["bbox"]
        img_w, img_h = sizes[ann["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= img_w and y + h <= img_h
        assert w >= 6 and h >= 6


def test_stats_span_sizes_and_classes(synth: Path) -> None:
    stats = synth_dataset_stats(str(synth))
    assert stats["num_images"] == NUM_IMAGES
    assert stats["images_without_objects"] >= 1
    assert stats["max_objects_per_image"] >= 5
    assert stats["min_box_side"] <= 16
    assert stats["max_box_side_frac"] >= 0.6
    assert sum(1 for v in stats["per_class"].values() if v > 0) >= 4
    assert set(stats["per_class"]) == set(SYNTH_CLASSES)
    assert stats["min_aspect"] <= 0.6 and stats["max_aspect"] >= 1.6


def test_render_matches_files_and_boxes_are_tight(synth: Path, coco_dict: dict) -> None:
    anns_by_image: dict[int, list] = {}
    for ann in coco_dict["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    for im in coco_dict["images"][:6]:
        img, objects = render_synthetic_image(SEED, im["id"] - 1)
        # The renderer reproduces the written file and its annotations exactly.
        assert np.array_equal(img, cv2.imread(str(synth.parent / "train" / im["file_name"])))
        anns = anns_by_image.get(im["id"], [])
        assert [a["bbox"] for a in anns] == [[float(v) for v in o.bbox] for o in objects]
        assert [a["category_id"] for a in anns] == [o.category_id for o in objects]
        for obj in objects:
            # Render the object alone on a blank image: its pixels touch all four box sides.
            x, y, w, h = obj.bbox
            blank = np.zeros(img.shape[:2], dtype=bool)
            blank[y : y + h, x : x + w] = obj.mask
            ys, xs = np.nonzero(blank)
            assert (xs.min(), xs.max(), ys.min(), ys.max()) == (x, x + w - 1, y, y + h - 1)


def test_occlusion_leaves_objects_visible() -> None:
    for index in range(15):
        img, objects = render_synthetic_image(SEED, index)
        full = []
        for obj in objects:
            x, y, w, h = obj.bbox
            m = np.zeros(img.shape[:2], dtype=bool)
            m[y : y + h, x : x + w] = obj.mask
            full.append(m)
        for i, m in enumerate(full):
            later = np.zeros_like(m)
            for other in full[i + 1 :]:
                later |= other
            assert np.count_nonzero(m & ~later) >= 0.4 * np.count_nonzero(m) - 1e-6


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FCOS_D2_CACHE", str(tmp_path))
    assert default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("FCOS_D2_CACHE")
    assert default_cache_dir() == os.path.expanduser(os.path.join("~", ".cache", "fcos_d2"))


def test_lazy_registration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_catalog: None
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FCOS_D2_CACHE", str(cache))
    monkeypatch.setenv("FCOS_D2_SYNTH_TRAIN_IMAGES", "5")
    monkeypatch.setenv("FCOS_D2_SYNTH_VAL_IMAGES", "3")
    register_builtin_datasets()
    register_builtin_datasets()  # idempotent
    assert set(BUILTIN_NAMES) <= set(DatasetCatalog.list())
    assert not list(cache.rglob("*.json")) and not list(cache.rglob("*.png"))

    meta = MetadataCatalog.get("fcos_synth_val")
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == list(SYNTH_CLASSES)
    assert meta.json_file.startswith(str(cache / "datasets" / builtin.SYNTH_VERSION))
    assert (
        "n3_s1" in meta.json_file and "n5_s0" in MetadataCatalog.get("fcos_synth_train").json_file
    )

    dicts = DatasetCatalog.get("fcos_synth_val")
    assert len(dicts) == 3 and os.path.isfile(meta.json_file)
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert not os.path.exists(MetadataCatalog.get("fcos_synth_train").json_file)

    # Later uses load the cached files without generating again.
    def fail(*args, **kwargs):
        raise AssertionError("generated twice")

    monkeypatch.setattr(builtin, "generate_synthetic_coco", fail)
    assert len(DatasetCatalog.get("fcos_synth_val")) == 3
    assert ensure_builtin_dataset("fcos_synth_val") == meta.json_file
    monkeypatch.undo()


def test_ensure_repairs_incomplete_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FCOS_D2_SYNTH_TRAIN_IMAGES", "2")
    loc = builtin._resolve("fcos_synth_train", str(tmp_path))
    # Leftovers of a killed run: a temporary folder and an image folder without json.
    os.makedirs(os.path.join(loc.out_dir, ".train.tmp-killed", "train"))
    os.makedirs(loc.image_root)
    Path(loc.image_root, "000000.png").write_bytes(b"partial")
    json_file = ensure_builtin_dataset("fcos_synth_train", root=str(tmp_path))
    assert json_file == loc.json_file and synth_dataset_stats(json_file)["num_images"] == 2
    assert sorted(os.listdir(loc.out_dir)) == [".lock", "train", "train.json"]
    assert cv2.imread(os.path.join(loc.image_root, "000000.png")) is not None


def test_interrupted_generation_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = {"n": 0}
    real = builtin._shape_mask

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(builtin, "_shape_mask", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_coco(str(out), "train", 10, SEED)
    assert calls["n"] > 12
    assert os.listdir(out) == []  # no json, no image folder, no temporary folder
    monkeypatch.undo()
    assert os.path.isfile(generate_synthetic_coco(str(out), "train", 3, SEED))
