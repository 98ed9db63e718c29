"""
The sections of tools/benchmark.py, one module per measurement, registered by name
(:data:`registry.SECTIONS`; ``--only`` / ``--skip`` take the names):

  inference (1)  eager inference of fcos-d2 and torchvision's FCOS (inference.py)
  export (1b)    the exported detector: ONNX Runtime, OpenVINO f32/bf16/INT8, torch.export
  train (2)      a training step; share (3) the FCOS-specific share (training.py)
  assign (4)     assignment + losses; atss (10) the same with ATSS (assignment.py)
  coco (5)       COCO evaluation; cocosize (7) at COCO size (coco_eval.py)
  ap (6)         AP of each precision and exported runtime (precision_ap.py)
  loader (8)     the training loader (loader.py); checks (9) the dataset checks (checks.py)
  rt (11)        FCOS-RT inference (variants.py)

A section is ``run(ctx: common.Context) -> dict`` under ``@registry.section(...)``; it reads
the run's level ("full", "quick", "smoke": every section at its smallest setting) from the
context and adds its ratios to ``ctx.ratios``.
"""

from . import (  # noqa: F401  (importing a section module registers it)
    assignment,
    checks,
    coco_eval,
    export,
    inference,
    loader,
    precision_ap,
    training,
    variants,
)
from .common import LEVELS, Context, cpu_model_name
from .registry import SECTIONS, Section, ordered, section, select

__all__ = [
    "LEVELS",
    "SECTIONS",
    "Context",
    "Section",
    "cpu_model_name",
    "ordered",
    "section",
    "select",
]
