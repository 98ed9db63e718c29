"""
fcos_d2/data/verify.py: bad image files found before training (DATALOADER.VERIFY_IMAGES,
SKIP_BAD_IMAGES) and skipped during it (DATALOADER.MAX_BAD_IMAGES), on tiny JPEGs.
"""

import logging

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from fcos_d2.data.checks import CheckedDatasetMapper
from fcos_d2.data.verify import (
    SkipBadImages,
    check_train_images,
    verify_image,
    verify_images,
)
from fcos_d2.engine.trainer import Trainer
from fcos_d2.errors import InputError
from helpers import QUICKSTART, TINY_OPTS, load_cfg

W, H = 64, 48


@pytest.fixture()
def images(tmp_path):
    """Paths of two good JPEGs, a truncated one (half its bytes) and a non-image."""
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("good0", "good1", "truncated"):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)
        paths[name] = str(path)
    data = open(paths["truncated"], "rb").read()
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    paths["garbage"] = str(tmp_path / "garbage.jpg")
    with open(paths["garbage"], "wb") as f:
        f.write(b"not an image")
    return paths


def _record(path, image_id, width=W):
    box = {"bbox": [4, 4, 30, 30], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    return {
        "file_name": path,
        "image_id": image_id,
        "width": width,
        "height": H,
        "annotations": [box],
    }


@pytest.fixture()
def messages():
    """The messages fcos_d2.data.verify logs (its own handler: the "fcos_d2" logger may not
    propagate to pytest's, once Detectron2's setup_logger configured it)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    log = logging.getLogger("fcos_d2.data.verify")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(old_level)


def test_truncated_jpeg_needs_a_decode_to_be_found(images):
    with Image.open(images["truncated"]) as im:
        im.verify()  # Pillow's verify() reads the markers only: it passes
    assert verify_image(images["good0"]) is None
    assert verify_image(images["good0"], (W, H)) is None
    assert verify_image(images["truncated"]).startswith("OSError: image file is truncated")
    assert verify_image(images["garbage"]).startswith("UnidentifiedImageError: cannot identify")
    assert verify_image(images["good0"], (W + 1, H)) == "size 64x48, but the dataset says 65x48"
    dicts = [_record(images[k], i) for i, k in enumerate(["good0", "truncated", "good1"])]
    assert [i for i, _ in verify_images(dicts, num_threads=2)] == [1]


def test_size_is_checked_after_exif_rotation(tmp_path):
    # EXIF orientation 6 (rotated 90 deg): Detectron2 reads the 64x48 JPEG as 48x64.
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (W, H), (9, 99, 199)).save(path, exif=exif)
    assert verify_image(path, (H, W)) is None
    assert verify_image(path, (W, H)) == "size 48x64, but the dataset says 64x48"


def test_bad_images_reported_at_once_or_dropped(images, messages):
    names = ["good0", "truncated", "good1", "garbage"]
    dicts = [_record(images[k], i) for i, k in enumerate(names)]
    with pytest.raises(InputError) as e:
        check_train_images(dicts, dataset="tiny")
    text = str(e.value)
    assert text.startswith("2 of the 4 images of tiny fail to decode")
    assert f"{images['truncated']} (image id 1): OSError: image file is truncated" in text
    assert f"{images['garbage']} (image id 3): UnidentifiedImageError" in text
    assert "good0" not in text and "good1" not in text
    kept = check_train_images(dicts, skip=True, dataset="tiny")
    assert [d["image_id"] for d in kept] == [0, 2]
    assert any(m.startswith("Dropped 2 of the 4 images of tiny") for m in messages)
    assert check_train_images(kept, dataset="tiny") is kept


def test_mapper_skips_bad_images_then_stops_with_the_list(images, messages):
    cfg = load_cfg(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS)
    good = [_record(images["good0"], 0), _record(images["good1"], 2)]
    mapper = SkipBadImages(CheckedDatasetMapper(cfg, is_train=True), good, max_bad=1)
    out = mapper(_record(images["good0"], 0))
    assert out["image_id"] == 0 and out["image"].shape[0] == 3 and len(out["instances"]) == 1
    # The truncated image: logged, and a good one of the dataset mapped in its place.
    assert mapper(_record(images["truncated"], 1))["image_id"] in (0, 2)
    (line,) = [m for m in messages if m.startswith("Skipped")]
    assert f"Skipped training image {images['truncated']} (image id 1): OSError" in line
    assert "1 of at most 1 in this worker" in line
    assert mapper(_record(images["truncated"], 1))["image_id"] in (0, 2)
    assert len([m for m in messages if m.startswith("Skipped")]) == 1  # not read again
    # Not a decoding failure: the dataset's size is wrong. Propagates, is not skipped.
    with pytest.raises(InputError, match="Mismatched image shape"):
        mapper(_record(images["good1"], 2, width=W + 3))
    with pytest.raises(InputError) as e:
        mapper(_record(images["garbage"], 3))
    text = str(e.value)
    assert "2 training images failed to decode in this data-loader worker, more than " in text
    assert "DATALOADER.MAX_BAD_IMAGES = 1" in text
    assert f"{images['truncated']} (image id 1): OSError" in text
    assert f"{images['garbage']} (image id 3): UnidentifiedImageError" in text
    first = SkipBadImages(CheckedDatasetMapper(cfg, is_train=True), good, max_bad=0)
    with pytest.raises(InputError, match="MAX_BAD_IMAGES = 0.*\n.*cannot identify"):
        first(_record(images["garbage"], 3))  # 0: the first bad image stops


@pytest.fixture()
def registered(images):
    name = "fcos_verify_tiny"
    dicts = [_record(images[k], i) for i, k in enumerate(["good0", "truncated", "good1"])]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c", "d", "e"]
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_trainer_loader_verifies_skips_and_drops(registered, images, messages):
    cfg = load_cfg(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS + ["DATASETS.TRAIN", f"('{registered}',)"])
    # Default: no verification; the truncated image is skipped when it comes up.
    batches = iter(Trainer.build_train_loader(cfg))
    seen = [d["image_id"] for _ in range(3) for d in next(batches)]
    assert 1 not in seen and set(seen) == {0, 2}
    assert any(images["truncated"] in m for m in messages if m.startswith("Skipped"))
    cfg.DATALOADER.VERIFY_IMAGES = True
    with pytest.raises(InputError, match=f"{images['truncated']} \\(image id 1\\): OSError"):
        Trainer.build_train_loader(cfg)
    cfg.DATALOADER.SKIP_BAD_IMAGES = True
    messages.clear()
    batches = iter(Trainer.build_train_loader(cfg))
    assert any(m.startswith("Dropped 1 of the 3 images") for m in messages)
    seen = [d["image_id"] for _ in range(3) for d in next(batches)]
    assert set(seen) == {0, 2}  # the truncated image dropped: never read, never skipped
    assert not any(m.startswith("Skipped") for m in messages)
