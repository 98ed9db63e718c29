"""fcos_d2/registry.py: fcos-d2's registry names, and the names of fcos-d2 0.1 configs
rewritten to them."""

import os

import fcos_d2
from helpers import ROOT


def test_legacy_names_are_upgraded():
    from detectron2.config import get_cfg

    from fcos_d2.registry import upgrade_legacy_names

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quickstart.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
    messages = upgrade_legacy_names(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "fcos_d2.FCOS"
    assert cfg.MODEL.BACKBONE.NAME == "fcos_d2.build_resnet_fpn_backbone"
    assert len(messages) == 2 and "write that in the config" in messages[0]
    assert upgrade_legacy_names(cfg) == []  # nothing left to rewrite
    # Another backbone of the same meta-architecture is left alone.
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    assert upgrade_legacy_names(cfg) == []


def test_register_as_registers_under_the_given_name():
    from detectron2.utils.registry import Registry

    from fcos_d2.registry import register_as

    registry = Registry("TEST")

    @register_as(registry, "ns.Thing")
    class Thing:
        pass

    assert registry.get("ns.Thing") is Thing and "Thing" not in registry
