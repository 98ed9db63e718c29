"""fcos-d2: FCOS (Tian et al., ICCV 2019) as a Detectron2 extension.

``import fcos_d2`` registers the FCOS backbone, head, assigner and meta-architecture
with Detectron2's registries.
"""

from . import modeling  # noqa: F401  (registers everything)
from .config import add_fcos_config

__version__ = "0.1.0"
__all__ = ["add_fcos_config", "modeling"]
