"""
The names fcos-d2 registers in Detectron2's global registries, and the names it used before.

Detectron2's ``META_ARCH`` and ``BACKBONE`` registries are shared by every extension in a
process: two objects under one name make the second import fail. fcos-d2's names carry the
package name, so they cannot collide with Detectron2's, AdelaiDet's (which registers a
backbone ``build_fcos_resnet_fpn_backbone``, fcos-d2's old name) or another extension's.
"""

import logging
from typing import Any, Callable, List

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.registry import Registry

__all__ = [
    "BACKBONE_NAME",
    "LEGACY_BACKBONE_NAME",
    "LEGACY_META_ARCH_NAME",
    "META_ARCH_NAME",
    "register_as",
    "upgrade_legacy_names",
]

logger = logging.getLogger(__name__)

#: ``cfg.MODEL.META_ARCHITECTURE`` of the FCOS detector.
META_ARCH_NAME = "fcos_d2.FCOS"
#: ``cfg.MODEL.BACKBONE.NAME`` of the ResNet-FPN-P6P7 backbone.
BACKBONE_NAME = "fcos_d2.build_resnet_fpn_backbone"
#: Names of fcos-d2 0.1 (configs saved by it, e.g. an OUTPUT_DIR's config.yaml, use them).
LEGACY_META_ARCH_NAME = "FCOS"
LEGACY_BACKBONE_NAME = "build_fcos_resnet_fpn_backbone"


def register_as(registry: Registry, name: str) -> Callable[[Any], Any]:
    """
    Decorator: register an object in ``registry`` under ``name`` (fvcore's ``register``
    always uses ``obj.__name__``, which would give a class or function a dotted name).
    """

    def deco(obj: Any) -> Any:
        registry._do_register(name, obj)  # fvcore's Registry, in Detectron2 0.6 and main
        return obj

    return deco


def upgrade_legacy_names(cfg: CfgNode) -> List[str]:
    """
    Rewrite fcos-d2 0.1's registered names in ``cfg`` (in place, unless frozen) to the
    current ones and return a message per rewrite (also logged as a warning).

    ``MODEL.META_ARCHITECTURE "FCOS"`` is only rewritten while no other extension has
    registered a meta-architecture of that name; ``MODEL.BACKBONE.NAME
    "build_fcos_resnet_fpn_backbone"`` is rewritten when the meta-architecture is
    fcos-d2's (AdelaiDet's backbone of that name needs AdelaiDet's own config keys).
    """
    messages = []
    model = cfg.MODEL
    if model.META_ARCHITECTURE == LEGACY_META_ARCH_NAME and (
        LEGACY_META_ARCH_NAME not in META_ARCH_REGISTRY
    ):
        messages.append(
            f"MODEL.META_ARCHITECTURE {LEGACY_META_ARCH_NAME!r} is fcos-d2 0.1's name; "
            f"using {META_ARCH_NAME!r} (write that in the config)"
        )
        model.META_ARCHITECTURE = META_ARCH_NAME
    if model.META_ARCHITECTURE == META_ARCH_NAME and model.BACKBONE.NAME == LEGACY_BACKBONE_NAME:
        messages.append(
            f"MODEL.BACKBONE.NAME {LEGACY_BACKBONE_NAME!r} is fcos-d2 0.1's name; "
            f"using {BACKBONE_NAME!r} (write that in the config)"
        )
        model.BACKBONE.NAME = BACKBONE_NAME
    for message in messages:
        logger.warning(message)
    return messages
