"""
The one place that knows how Detectron2 versions differ, and the list of every change
fcos-d2 makes to another library's state (:data:`PATCHES`).

fcos-d2 runs on Detectron2 0.6 (the PyPI route of tools/setup_env.sh, built without
its C++ extension) and on a current Detectron2 built from source. Everything else in
the project imports Detectron2 normally and asks this module about the differences.
"""

import contextlib
import importlib
import re
import types
from typing import Iterator, Optional, Tuple

import detectron2
import numpy
import torch.distributed as dist
from detectron2.utils import comm
from torch import Tensor

from .errors import InputError

__all__ = [
    "D2_VERSION",
    "HAS_D2_DEFORM_CONV",
    "HAS_FAST_COCOEVAL",
    "LAUNCH_SUPPORTS_CPU",
    "cocoeval_fast_path",
    "create_local_process_group",
    "d2_deform_conv_usable",
    "PATCHES",
    "fast_cocoeval_class",
    "import_lvis",
    "numpy_aliases_for",
]


#: Every change fcos-d2 makes to the state of Detectron2, torchvision, fvcore or torch, with
#: when it happens and why. Registrations in Detectron2's own registries (META_ARCH,
#: BACKBONE), its DatasetCatalog / MetadataCatalog (the built-in datasets) and the
#: ``fcos_d2::batched_nms_mask`` operator are additions under fcos-d2's own names and are
#: not listed. "stage" says when the change happens: "import" (importing fcos_d2),
#: "lvis evaluator", "coco evaluation" (undone after it), "cpu launch", "export". Building a
#: Trainer or a COCO evaluator changes nothing. tests/unit/core/test_compat.py checks that
#: importing fcos_d2, building a Trainer and an evaluator, and exporting change exactly
#: the attributes listed for those stages.
PATCHES = (
    {
        "target": "detectron2.data.datasets.pascal_voc.np",
        "stage": "import",
        "when": "import fcos_d2 (numpy without np.str / np.bool)",
        "why": "Detectron2 0.6's load_voc_instances uses np.str, removed in numpy 1.24: that "
        "module alone gets a numpy with the removed aliases (numpy_aliases_for)",
    },
    {
        "target": "detectron2.evaluation.pascal_voc_evaluation.np",
        "stage": "import",
        "when": "import fcos_d2 (numpy without np.str / np.bool)",
        "why": "Detectron2 0.6's voc_eval uses np.bool (same remedy)",
    },
    {
        "target": "lvis.eval.np",
        "stage": "lvis evaluator",
        "when": "building an LVIS evaluator (import_lvis)",
        "why": "lvis 0.5.3 uses np.float (same remedy)",
    },
    {
        "target": "detectron2.evaluation.coco_evaluation.COCOeval_opt",
        "stage": "coco evaluation",
        "when": "during one COCO evaluation (cocoeval_fast_path), restored after it",
        "why": "Detectron2 without its C++ extension has no fast COCOeval; "
        "faster_coco_eval's takes its place for that evaluation",
    },
    {
        "target": "detectron2.utils.comm._LOCAL_PROCESS_GROUP",
        "stage": "cpu launch",
        "when": "starting CPU workers under Detectron2 0.6 (create_local_process_group)",
        "why": "0.6 sets its per-machine group only in its own (CUDA-only) launcher",
    },
    {
        "target": "torch op torchvision::nms (fake kernel)",
        "stage": "export",
        "when": "the first export (fcos_d2.modeling.nms.register_nms_fake_for_export)",
        "why": "torchvision's fake nms bakes a min-size-2 check into torch.export programs",
    },
)


def _parse_version(text: str) -> Tuple[int, ...]:
    parts = []
    for token in text.split("+")[0].split("."):
        digits = re.match(r"\d*", token).group()  # leading digits: "0rc1" -> 0
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(token):  # a pre-release tag ends the numeric part
            break
    return tuple(parts)


#: Detectron2's version as a tuple, e.g. (0, 6).
D2_VERSION: Tuple[int, ...] = _parse_version(detectron2.__version__)


def _has_fast_cocoeval() -> bool:
    # 0.6 from PyPI has an empty placeholder `detectron2._C` (no C++ ops); a real build
    # exports the C++ COCOeval used by COCOEvaluator(use_fast_impl=True).
    try:
        ext = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return hasattr(ext, "COCOevalAccumulate") and hasattr(ext, "COCOevalEvaluateImages")


#: Whether COCOEvaluator's C++ evaluation (use_fast_impl=True) is available.
HAS_FAST_COCOEVAL: bool = _has_fast_cocoeval()


def fast_cocoeval_class() -> Optional[type]:
    """
    The fastest COCOeval implementation available besides pycocotools: Detectron2's C++
    ``COCOeval_opt`` when Detectron2 was built with its extension, else
    ``faster_coco_eval.COCOeval_faster`` when that optional package is installed, else None.
    """
    if HAS_FAST_COCOEVAL:
        from detectron2.evaluation.fast_eval_api import COCOeval_opt

        return COCOeval_opt
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return None
    return COCOeval_faster


@contextlib.contextmanager
def cocoeval_fast_path(cls: Optional[type]) -> Iterator[None]:
    """
    While inside, Detectron2's ``COCOEvaluator(use_fast_impl=True)`` evaluates with ``cls``
    (from :func:`fast_cocoeval_class`). Detectron2 reads the class from its module's global
    ``COCOeval_opt``; where Detectron2 has its own C++ one (or ``cls`` is None) nothing
    changes, else the global is ``cls`` only for the duration of one evaluator's
    evaluation, then restored (PATCHES).
    """
    if cls is None or HAS_FAST_COCOEVAL:
        yield
        return
    import detectron2.evaluation.coco_evaluation as coco_evaluation

    saved = coco_evaluation.COCOeval_opt
    coco_evaluation.COCOeval_opt = cls
    try:
        yield
    finally:
        coco_evaluation.COCOeval_opt = saved


def _has_d2_deform_conv() -> bool:
    # Detectron2 built with its extension exports the deformable convolution kernels (CUDA
    # only); 0.6 from PyPI has an empty placeholder `detectron2._C`.
    try:
        ext = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    names = ("deform_conv_forward", "deform_conv_backward_input", "modulated_deform_conv_forward")
    return all(hasattr(ext, name) for name in names)


#: Whether Detectron2 was built with its deformable convolution ops.
HAS_D2_DEFORM_CONV: bool = _has_d2_deform_conv()


def d2_deform_conv_usable(x: Tensor) -> bool:
    """
    Whether Detectron2's own ``DeformConv`` / ``ModulatedDeformConv`` can run (forward and
    backward) on ``x``: only with its compiled ops and on a CUDA tensor (its CPU path has
    no backward and no DCNv2). Elsewhere fcos_d2.modeling.deform uses torchvision's op.
    """
    return HAS_D2_DEFORM_CONV and x.is_cuda


#: Whether ``detectron2.engine.launch`` can start several CPU (GLOO) workers. 0.6 asserts
#: CUDA in its workers; newer versions choose GLOO when no GPU exists.
LAUNCH_SUPPORTS_CPU: bool = hasattr(comm, "create_local_process_group")


def create_local_process_group(num_workers_per_machine: int) -> None:
    """
    Create the per-machine process group that ``detectron2.utils.comm`` uses for
    ``get_local_rank``/``get_local_size``. Call once in every worker after
    ``init_process_group``.
    """
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    # Detectron2 0.6 keeps the group in a module attribute that its launcher sets.
    assert comm._LOCAL_PROCESS_GROUP is None
    world_size = dist.get_world_size()
    machine_rank = dist.get_rank() // num_workers_per_machine
    for i in range(world_size // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


# ------------------------------------------------------------------ numpy aliases
#: Aliases that numpy 1.24 removed and that Detectron2 0.6's Pascal VOC code (``np.str``,
#: ``np.bool``) and the ``lvis`` package (``np.float``) still use.
_REMOVED_NUMPY_ALIASES = {"bool": bool, "int": int, "float": float, "object": object, "str": str}


class _NumpyWithAliases(types.ModuleType):
    """numpy, plus the removed aliases numpy lacks; everything else is numpy's own."""

    def __getattr__(self, name: str):
        return getattr(numpy, name)


def numpy_aliases_for(module: types.ModuleType) -> None:
    """
    Give ``module`` (one that did ``import numpy as np``) a ``np`` that also has the
    aliases numpy >= 1.24 removed (``np.float`` is ``float``, ...). Only that module's
    global changes; numpy itself is untouched. Nothing is done where numpy has them all.
    """
    # vars(), not hasattr: numpy 2 warns on access to some of the removed names.
    missing = {k: v for k, v in _REMOVED_NUMPY_ALIASES.items() if k not in vars(numpy)}
    if not missing or isinstance(getattr(module, "np", None), _NumpyWithAliases):
        return
    proxy = _NumpyWithAliases("numpy")
    proxy.__dict__.update(missing)
    module.np = proxy


def _patch_pascal_voc() -> None:
    # Detectron2 0.6: load_voc_instances uses np.str, voc_eval np.bool (both fixed later).
    import detectron2.data.datasets.pascal_voc as voc_data
    import detectron2.evaluation.pascal_voc_evaluation as voc_eval

    numpy_aliases_for(voc_data)
    numpy_aliases_for(voc_eval)


_patch_pascal_voc()


def import_lvis() -> types.ModuleType:
    """
    The ``lvis`` package (for Detectron2's LVISEvaluator), made to work on numpy >= 1.24
    (lvis 0.5.3, the last release, uses ``np.float``). Raises InputError if it is missing.
    """
    try:
        import lvis
        import lvis.eval
    except ImportError as e:
        raise InputError(
            "LVIS evaluation needs the lvis package: pip install --no-deps lvis==0.5.3 "
            f"(its other dependencies are Detectron2's) ({e})"
        ) from e
    numpy_aliases_for(lvis.eval)
    return lvis
