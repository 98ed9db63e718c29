"""fcos-d2: FCOS (Tian et al., ICCV 2019) as a Detectron2 extension.

``import fcos_d2`` registers the FCOS backbone, head, assigner and meta-architecture
with Detectron2's registries, and the built-in datasets (generated on first use) with
its DatasetCatalog.
"""

# compat: Detectron2 version differences (e.g. its 0.6 VOC code on numpy 2);
# modeling: registers the model parts.
from . import compat, modeling  # noqa: F401
from .config import add_fcos_config
from .data import register_builtin_datasets
from .errors import InputError

register_builtin_datasets()

__version__ = "0.1.0"
__all__ = ["InputError", "add_fcos_config", "modeling", "register_builtin_datasets"]
