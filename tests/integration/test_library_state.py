"""Importing fcos_d2, building a Trainer and a COCO evaluator, and exporting change exactly
the attributes of other libraries that fcos_d2.compat.PATCHES lists, stage by stage
(measured in fresh interpreters, a few seconds each)."""

import json
import os
import subprocess
import sys

import pytest

from fcos_d2.compat import PATCHES
from helpers import ROOT

# Run in a fresh interpreter: import every third-party module that the steps below load
# (the list comes from a first run), snapshot their attributes, then import fcos_d2, build a
# Trainer and a COCO evaluator, and finally register what exporting registers; after each
# step report which module attributes now hold another object, and whether torchvision's
# nms fake kernel is still torchvision's.
_SCRIPT = r"""
import importlib, json, sys, tempfile, types, warnings
warnings.simplefilter("ignore")
LIBS = ("detectron2", "torchvision", "fvcore", "lvis", "pycocotools", "faster_coco_eval")
mode, out = sys.argv[1], sys.argv[2]

def third_party():
    return sorted(n for n, m in list(sys.modules.items())
                  if isinstance(m, types.ModuleType) and n.split(".")[0] in LIBS)

def snapshot():
    return {n: {a: id(v) for a, v in vars(sys.modules[n]).items() if not a.startswith("__")}
            for n in third_party()}

def changed(before, after):
    found = set()
    for name, attrs in before.items():
        now = after.get(name, {})
        found |= {f"{name}.{a}" for a in set(attrs) | set(now) if attrs.get(a) != now.get(a)}
    return sorted(found)

def nms_fake():
    import torchvision  # noqa: F401  (registers the op and its fake kernel)
    from torch._library.simple_registry import singleton
    return id(singleton.find("torchvision::nms").fake_impl.kernel.func)

if mode == "run":
    for name in json.load(open(out + ".modules")):
        try:
            importlib.import_module(name)
        except Exception:
            pass
result, fake0, s0 = {}, nms_fake(), snapshot()
import fcos_d2  # noqa: E402
from detectron2.config import get_cfg
from fcos_d2.engine import Trainer, build_evaluator
s1 = snapshot()
result["import"] = changed(s0, s1)
cfg = get_cfg()
fcos_d2.add_fcos_config(cfg)
cfg.merge_from_file(sys.argv[3])
tiny = "('fcos_tiny_train',)"
cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", tempfile.mkdtemp(),
                     "DATASETS.TRAIN", tiny, "DATASETS.TEST", tiny,
                     "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"])
from detectron2.data.datasets import register_coco_instances
register_coco_instances("fcos_tiny_train", {}, sys.argv[4], sys.argv[5])
Trainer(cfg)
build_evaluator(cfg, "fcos_tiny_train", tempfile.mkdtemp())
s2 = snapshot()
result["trainer and evaluator"] = changed(s1, s2)
result["nms fake untouched"] = nms_fake() == fake0
from fcos_d2.modeling.nms import register_nms_fake_for_export
register_nms_fake_for_export()
result["export"] = changed(s2, snapshot())
result["nms fake after export"] = nms_fake() == fake0
if mode == "list":
    json.dump(third_party(), open(out + ".modules", "w"))
json.dump(result, open(out, "w"))
"""


def _run(mode: str, out: str, tiny_coco) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    quickstart = os.path.join(ROOT, "configs", "quickstart.yaml")
    cmd = [sys.executable, "-c", _SCRIPT, mode, out, quickstart, *tiny_coco]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    from fcos_d2.data.builtin import generate_synthetic_coco

    root = tmp_path_factory.mktemp("compat_data")
    json_file = generate_synthetic_coco(str(root), "train", 2, seed=1, min_size=96, max_size=128)
    return json_file, os.path.join(root, "train")


@pytest.fixture(scope="module")
def changes(tmp_path_factory, tiny_coco):
    out = str(tmp_path_factory.mktemp("compat") / "result.json")
    _run("list", out, tiny_coco)  # which third-party modules the steps import
    return _run("run", out, tiny_coco)


def _listed(stage: str) -> list:
    return sorted(p["target"] for p in PATCHES if p["stage"] == stage and " " not in p["target"])


def test_import_changes_exactly_the_listed_attributes(changes):
    assert changes["import"] == _listed("import")


def test_trainer_and_evaluator_change_nothing_more(changes):
    assert changes["trainer and evaluator"] == []
    assert not [p for p in PATCHES if p["stage"] in ("trainer", "coco evaluator")]


def test_nms_fake_kernel_is_replaced_only_by_exporting(changes):
    assert changes["nms fake untouched"] is True
    assert changes["export"] == []  # a torch op registration, not a module attribute
    assert changes["nms fake after export"] is False
    assert [p["stage"] for p in PATCHES if "torchvision::nms" in p["target"]] == ["export"]
