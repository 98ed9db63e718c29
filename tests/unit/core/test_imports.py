"""Every public module of fcos_d2 imports, and importing registers the FCOS parts."""

import importlib
import os
import pkgutil
import subprocess
import sys

import fcos_d2
from helpers import ROOT  # noqa: E402


def _public_modules():
    names = ["fcos_d2"]
    for info in pkgutil.walk_packages(fcos_d2.__path__, prefix="fcos_d2."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_every_public_module_imports():
    names = _public_modules()
    assert {"fcos_d2.config", "fcos_d2.compat", "fcos_d2.modeling.meta_arch"} <= set(names)
    for name in names:
        importlib.import_module(name)


def test_import_registers_everything():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    from fcos_d2.modeling import (
        FCOS,
        FCOS_ASSIGNER_REGISTRY,
        FCOS_HEAD_REGISTRY,
        build_fcos_resnet_fpn_backbone,
    )

    assert META_ARCH_REGISTRY.get("fcos_d2.FCOS") is FCOS
    assert BACKBONE_REGISTRY.get("fcos_d2.build_resnet_fpn_backbone") is (
        build_fcos_resnet_fpn_backbone
    )
    # The generic names stay free for Detectron2, AdelaiDet and other extensions.
    assert "FCOS" not in META_ARCH_REGISTRY
    assert "build_fcos_resnet_fpn_backbone" not in BACKBONE_REGISTRY
    assert FCOS_HEAD_REGISTRY.get("FCOSHead")
    assert FCOS_ASSIGNER_REGISTRY.get("FCOSAssigner")


def test_fcos_d2_builds_on_detectron2s_engine(monkeypatch):
    import os

    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    from fcos_d2.engine import Trainer
    from fcos_d2.engine.launch import launch
    from fcos_d2.evaluation import PRCurveCOCOEvaluator
    from helpers import LAUNCHER_VARS

    assert issubclass(Trainer, DefaultTrainer)
    assert issubclass(PRCurveCOCOEvaluator, COCOEvaluator)
    for name in [*LAUNCHER_VARS, *(k for k in os.environ if k.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)
    calls = []
    launch(lambda *a: calls.append((os.getpid(), a)), 1, args=(3, "x"))  # one process
    assert calls == [(os.getpid(), (3, "x"))]  # Detectron2's launch ran it here


# AdelaiDet registers these names (adet/modeling/backbone/fpn.py, adet/modeling/fcos/fcos.py,
# adet/modeling/one_stage_detector.py); Detectron2 main has its own FCOS class (unregistered).
ADELAIDET_STAND_INS = """
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY

@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape):
    raise RuntimeError("AdelaiDet stand-in")

@META_ARCH_REGISTRY.register()
class OneStageDetector:
    pass

@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS:
    pass

@META_ARCH_REGISTRY.register()
class FCOS:  # another extension's generic name
    pass
"""


def test_imports_beside_adelaidet_names():
    # In a fresh process: AdelaiDet's names are registered first, then fcos_d2 is imported
    # and builds its model; AdelaiDet's objects stay where they were.
    code = (
        ADELAIDET_STAND_INS
        + """
import fcos_d2
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg = get_cfg()
fcos_d2.add_fcos_config(cfg)
cfg.merge_from_file("configs/quickstart.yaml")
cfg.MODEL.DEVICE = "cpu"
model = build_model(cfg)
assert type(model).__module__ == "fcos_d2.modeling.meta_arch", type(model)
assert BACKBONE_REGISTRY.get("build_fcos_resnet_fpn_backbone").__module__ == "__main__"
assert META_ARCH_REGISTRY.get("FCOS").__module__ == "__main__"
print("ok")
"""
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_config_with_legacy_names_builds_and_trains_through_train_net(tmp_path):
    # A config saved by fcos-d2 0.1 (old names) still runs through the entry points, with a
    # warning that says what to write instead.
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quickstart.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)  # the meta-architecture upgrades the backbone name itself
    assert type(model).__name__ == "FCOS"
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    old = tmp_path / "old_config.yaml"
    old.write_text(cfg.dump())
    from fcos_d2.engine import argument_parser, setup

    args = argument_parser().parse_args(
        ["--config-file", str(old), "OUTPUT_DIR", str(tmp_path / "out")]
    )
    new = setup(args)
    assert new.MODEL.META_ARCHITECTURE == "fcos_d2.FCOS"
    assert new.MODEL.BACKBONE.NAME == "fcos_d2.build_resnet_fpn_backbone"
