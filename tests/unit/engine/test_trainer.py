"""fcos_d2/engine/trainer.py: class-balanced sampling (Detectron2's RepeatFactorTrainingSampler)
with the FCOS trainer; its EMA and best-checkpoint hooks: test_ema.py, test_best_checkpoint.py."""

import collections
import copy
import math

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from fcos_d2.engine import Trainer
from helpers import tiny_cfg

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
