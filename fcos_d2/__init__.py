"""fcos-d2: FCOS (Tian et al., ICCV 2019) as a Detectron2 extension.

``import fcos_d2`` registers the FCOS backbone, head, assigner and meta-architecture
with Detectron2's registries, and the built-in datasets (generated on first use) with
its DatasetCatalog. Where torch is not installed (a deployment machine), it imports
nothing else: ``fcos_d2.deploy`` runs exported models with numpy and the runtime.
"""

from .errors import InputError

__version__ = "0.2.0"

try:
    import torch  # noqa: F401
except ImportError:  # deployment only: see fcos_d2/deploy.py
    __all__ = ["InputError"]
else:
    # compat: Detectron2 version differences (e.g. its 0.6 VOC code on numpy 2);
    # modeling: registers the model parts.
    from . import compat, modeling  # noqa: F401
    from .config import add_fcos_config
    from .data import register_builtin_datasets

    register_builtin_datasets()
    __all__ = ["InputError", "add_fcos_config", "modeling", "register_builtin_datasets"]
