"""Training and evaluation with Detectron2's engine."""

from .checkpoint import FCOSCheckpointer, IncompatibleCheckpointError
from .launch import launch
from .trainer import Trainer, argument_parser, check_num_classes, setup

__all__ = [
    "FCOSCheckpointer",
    "IncompatibleCheckpointError",
    "Trainer",
    "argument_parser",
    "check_num_classes",
    "launch",
    "setup",
]
