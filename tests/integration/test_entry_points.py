"""fcos_d2 beside AdelaiDet's registry names, and configs of fcos-d2 0.1 (old names) through
the entry points (subprocess runs)."""

import os
import subprocess
import sys

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fcos_d2
from helpers import ROOT  # noqa: E402

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
