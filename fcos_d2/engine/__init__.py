"""Training and evaluation with Detectron2's engine."""

from .checkpoint import FCOSCheckpointer, IncompatibleCheckpointError
from .evaluators import EVALUATOR_TYPES, build_evaluator
from .launch import launch
from .trainer import Trainer, argument_parser, check_num_classes, setup

__all__ = [
    "EVALUATOR_TYPES",
    "FCOSCheckpointer",
    "IncompatibleCheckpointError",
    "Trainer",
    "argument_parser",
    "build_evaluator",
    "check_num_classes",
    "launch",
    "setup",
]
