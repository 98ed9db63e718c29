"""Every public module of fcos_d2 imports, and importing registers the FCOS parts."""

import importlib
import pkgutil

import fcos_d2


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


def test_fcos_d2_builds_on_detectron2s_engine():

    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    from fcos_d2.engine import Trainer
    from fcos_d2.evaluation import PRCurveCOCOEvaluator

    assert issubclass(Trainer, DefaultTrainer)
    assert issubclass(PRCurveCOCOEvaluator, COCOEvaluator)
