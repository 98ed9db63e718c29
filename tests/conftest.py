"""Shared fixtures of the tests."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Names of tiny registered COCO datasets of built-in images (96-128 px), for in-process
    Trainer runs (see helpers.tiny_cfg): "train" (6 images), "val" (3) and "one" (1 image:
    every batch of it is the same, whatever the sampler's order)."""
    root = tmp_path_factory.mktemp("tiny_data")
    names = {}
    for split, n in (("train", 6), ("val", 3), ("one", 1)):
        json_file = generate_synthetic_coco(str(root), split, n, seed=5, min_size=96, max_size=128)
        name = f"fcos_tiny_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, os.path.join(root, split))
        MetadataCatalog.get(name).thing_classes = list(SYNTH_CLASSES)
        names[split] = name
    return names


@pytest.fixture(scope="module")
def coco_val4(tmp_path_factory):
    """Four small built-in images in COCO format."""
    out = tmp_path_factory.mktemp("coco")
    json_file = generate_synthetic_coco(str(out), "val", 4, seed=3, min_size=128, max_size=160)
    return json_file, os.path.join(out, "val")
