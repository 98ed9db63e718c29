"""fcos_d2/engine/trainer.py: class-balanced sampling (Detectron2's RepeatFactorTrainingSampler)
with the FCOS trainer; datasets given by path (--voc-*, --yolo-*); its EMA and
best-checkpoint hooks: test_ema.py, test_best_checkpoint.py."""

import collections
import copy
import math
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from fcos_d2 import InputError
from fcos_d2.engine import Trainer, argument_parser
from fcos_d2.engine.trainer import _register_user_data
from helpers import QUICKSTART, load_cfg, tiny_cfg

RARE = 4  # "cross"


@pytest.fixture(scope="module")
def imbalanced(tiny_data):
    """The tiny train set with class RARE kept in its first image only (a rare class)."""
    dicts = copy.deepcopy(DatasetCatalog.get(tiny_data["train"]))
    for i, d in enumerate(dicts):
        keep = [a for a in d["annotations"] if a["category_id"] != RARE]
        if i == 0:
            keep.append({**d["annotations"][0], "category_id": RARE})
        d["annotations"] = keep
    name = "fcos_tiny_imbalanced"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(
        thing_classes=MetadataCatalog.get(tiny_data["train"]).thing_classes, evaluator_type="coco"
    )
    return name, dicts


def hand_repeat_factors(dicts, t):
    """LVIS (Gupta et al. 2019): f(c) = fraction of images with class c,
    r(c) = max(1, sqrt(t / f(c))), r(image) = max over its classes (1 without any)."""
    images_with = collections.Counter()
    for d in dicts:
        for c in {a["category_id"] for a in d["annotations"]}:
            images_with[c] += 1
    r_class = {c: max(1.0, math.sqrt(t / (n / len(dicts)))) for c, n in images_with.items()}
    return [max([r_class[a["category_id"]] for a in d["annotations"]], default=1.0) for d in dicts]


def test_repeat_factors_equal_the_lvis_formula(imbalanced):
    _, dicts = imbalanced
    expected = hand_repeat_factors(dicts, 0.5)
    # The rare class is in 1 of 6 images: sqrt(0.5 / (1/6)) = sqrt(3).
    assert expected[0] == pytest.approx(math.sqrt(3))
    got = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_fcos_trainer_samples_by_repeat_factor(imbalanced, tmp_path):
    name, dicts = imbalanced
    cfg = tiny_cfg(
        {"train": name, "val": name},
        tmp_path,
        "DATALOADER.SAMPLER_TRAIN",
        "RepeatFactorTrainingSampler",
        "DATALOADER.REPEAT_THRESHOLD",
        "0.5",
        "SOLVER.IMS_PER_BATCH",
        "2",
    )
    np.random.seed(0)  # the sampler's seed (comm.shared_random_seed)
    loader = iter(Trainer.build_train_loader(cfg))
    counts = collections.Counter(d["image_id"] for _ in range(300) for d in next(loader))
    factors = hand_repeat_factors(dicts, 0.5)
    total = sum(counts.values())
    for d, r in zip(dicts, factors):
        expected = total * r / sum(factors)
        assert counts[d["image_id"]] == pytest.approx(expected, rel=0.2), (d["image_id"], r)
    # The image of the rare class comes about sqrt(3) times as often as the others.
    assert counts[dicts[0]["image_id"]] > 1.4 * total / len(dicts)


# ------------------------------------------------------------ datasets given by path
def _yolo(root, names):
    os.makedirs(root / "images")
    (root / "data.yaml").write_text(f"names: {names}\n")
    return str(root)


def _voc(root, split, names):
    for sub in ("Annotations", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    (root / "ImageSets/Main" / f"{split}.txt").write_text(f"{split}0\n")
    objects = "".join(f"<object><name>{n}</name></object>" for n in names)
    (root / "Annotations" / f"{split}0.xml").write_text(f"<annotation>{objects}</annotation>")
    return str(root)


def _register(*argv):
    args = argument_parser().parse_args(["--config-file", QUICKSTART, *argv])
    cfg = load_cfg(QUICKSTART)
    cfg.merge_from_list(args.opts)
    _register_user_data(cfg, args)
    return cfg


def test_yolo_flags_set_the_datasets_and_class_count(tmp_path):
    train = _yolo(tmp_path / "train", "[cat, dog, cow]")
    test = _yolo(tmp_path / "test", "[cat, dog, cow]")
    cfg = _register("--yolo-train", train, "--yolo-test", test)
    assert cfg.DATASETS.TRAIN == ("yolo_user_train",) and cfg.DATASETS.TEST == ("yolo_user_test",)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 3
    meta = MetadataCatalog.get("yolo_user_test")
    assert (meta.thing_classes, meta.evaluator_type, meta.dirname) == (
        ["cat", "dog", "cow"],
        "coco",
        test,
    )
    with pytest.raises(InputError, match=f"--yolo-test {test} has 3 classes but .* is 7"):
        _register("--yolo-test", test, "MODEL.FCOS.NUM_CLASSES", "7")
    other = _yolo(tmp_path / "other", "[cat, dog, pig]")
    with pytest.raises(InputError, match="classes .*'cow'.* differ from the test .*'pig'"):
        _register("--yolo-train", train, "--yolo-test", other)


def test_voc_flags_take_the_class_names_of_both_splits(tmp_path):
    voc = _voc(tmp_path / "voc", "train", ["person", "car", "person"])
    _voc(tmp_path / "voc", "val", ["bird"])
    cfg = _register("--voc-train", voc, "train", "--voc-test", voc, "val")
    assert cfg.DATASETS.TRAIN == ("voc_user_train",) and cfg.DATASETS.TEST == ("voc_user_test",)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 3
    for name in ("voc_user_train", "voc_user_test"):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["bird", "car", "person"]
        assert (meta.evaluator_type, meta.dirname) == ("pascal_voc", voc)
    assert MetadataCatalog.get("voc_user_test").split == "val"
    # --class-names: comma-separated or a file, in the given order.
    (tmp_path / "names.txt").write_text("person\ncar\nbird\nbus\n")
    for given in ("person, car,bird,bus", str(tmp_path / "names.txt")):
        cfg = _register(
            "--voc-test", voc, "val", "--class-names", given, *["MODEL.FCOS.NUM_CLASSES", "4"]
        )
        assert MetadataCatalog.get("voc_user_test").thing_classes == [
            "person",
            "car",
            "bird",
            "bus",
        ]


def test_dataset_flags_that_conflict_are_errors(tmp_path):
    yolo = _yolo(tmp_path / "y", "[a]")
    with pytest.raises(InputError, match="give one of --coco-train, --yolo-train"):
        _register("--coco-train", "x.json", str(tmp_path), "--yolo-train", yolo)
    with pytest.raises(InputError, match="--class-names is for --voc-train"):
        _register("--class-names", "a,b")
    with pytest.raises(InputError, match="distinct names"):
        _register("--yolo-train", yolo, "--class-names", "a,a")
    with pytest.raises(InputError, match="YOLO folder not found"):
        _register("--yolo-train", str(tmp_path / "missing"))
