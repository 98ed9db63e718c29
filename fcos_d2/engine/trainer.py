"""Detectron2's DefaultTrainer with the FCOS evaluator, checkpointer and CPU support."""

import argparse
import contextlib
import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Iterator, List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    hooks,
)
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..config import add_fcos_config
from ..data.checks import CheckedDatasetMapper, check_files, sanitize_dataset_dicts
from ..errors import InputError
from ..modeling.tta import FCOSWithTTA
from ..registry import upgrade_legacy_names
from .checkpoint import FCOSCheckpointer
from .evaluators import build_evaluator

__all__ = ["Trainer", "argument_parser", "check_num_classes", "setup"]

logger = logging.getLogger("fcos_d2")

USER_TRAIN, USER_TEST = "coco_user_train", "coco_user_test"


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` plus options for COCO-format data by path."""
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-train", nargs=2, metavar=("JSON", "IMAGE_DIR"),
        help="train on a COCO-format dataset (sets DATASETS.TRAIN and, unless given, "
        "MODEL.FCOS.NUM_CLASSES from its categories)",
    )  # fmt: skip
    parser.add_argument(
        "--coco-test", nargs=2, metavar=("JSON", "IMAGE_DIR"),
        help="evaluate on a COCO-format dataset (sets DATASETS.TEST)",
    )  # fmt: skip
    return parser


def _coco_categories(json_file: str) -> int:
    if not os.path.isfile(json_file):
        raise InputError(f"COCO annotation file not found: {json_file}")
    with open(json_file) as f:
        try:
            cats = json.load(f).get("categories")
        except json.JSONDecodeError as e:
            raise InputError(f"{json_file} is not valid JSON: {e}") from e
    if not cats:
        raise InputError(f"{json_file} has no 'categories'")
    return len(cats)


def _register_user_data(cfg: CfgNode, args: argparse.Namespace) -> None:
    opts = list(getattr(args, "opts", None) or [])
    given_num_classes = "MODEL.FCOS.NUM_CLASSES" in opts[::2]
    for flag, name, key in (("coco_train", USER_TRAIN, "TRAIN"), ("coco_test", USER_TEST, "TEST")):
        paths = getattr(args, flag, None)
        if not paths:
            continue
        json_file, image_root = paths
        if not os.path.isdir(image_root):
            flag_name = "--" + flag.replace("_", "-")
            raise InputError(f"{flag_name}: image folder not found: {image_root}")
        num = _coco_categories(json_file)
        if name not in MetadataCatalog.list():
            register_coco_instances(name, {}, json_file, image_root)
        setattr(cfg.DATASETS, key, (name,))
        if key == "TRAIN" and not given_num_classes:
            cfg.MODEL.FCOS.NUM_CLASSES = num
        elif num != cfg.MODEL.FCOS.NUM_CLASSES:
            raise InputError(
                f"{json_file} has {num} categories but MODEL.FCOS.NUM_CLASSES is "
                f"{cfg.MODEL.FCOS.NUM_CLASSES}"
            )


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``--config-file`` and overrides; CPU when no GPU exists; Detectron2 setup."""
    cfg = get_cfg()
    add_fcos_config(cfg)
    if not os.path.isfile(args.config_file):
        raise InputError(f"config file not found: {args.config_file}")
    try:
        cfg.merge_from_file(args.config_file)
    except KeyError as e:
        raise InputError(f"{args.config_file}: {e.args[0] if e.args else e}") from e
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise InputError(f"command-line config override: {e.args[0] if e.args else e}") from e
    upgrade_legacy_names(cfg)
    _register_user_data(cfg, args)
    use_cpu = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if use_cpu:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fcos_d2", abbrev_name="fcos"
    )
    if use_cpu:
        logger.warning("No GPU found: running on the CPU (MODEL.DEVICE=cpu)")
    return cfg


def check_num_classes(cfg: CfgNode, dataset_names: List[str]) -> None:
    """Raise if a dataset's ``thing_classes`` disagree with ``MODEL.FCOS.NUM_CLASSES``."""
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.FCOS.NUM_CLASSES:
            raise InputError(
                f"dataset '{name}' has {len(classes)} classes but MODEL.FCOS.NUM_CLASSES is "
                f"{cfg.MODEL.FCOS.NUM_CLASSES}; set MODEL.FCOS.NUM_CLASSES {len(classes)}"
            )


def _create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    # Detectron2's create_ddp_model passes device_ids=[local_rank], which DDP rejects for
    # a CPU module; on the CPU leave device_ids unset. On a GPU use the model's device
    # (launch set it; with one visible GPU per task it is cuda:0 whatever the local rank).
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cpu":
        kwargs.pop("device_ids", None)
    else:
        kwargs["device_ids"] = [device.index if device.index is not None else 0]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


@contextlib.contextmanager
def _cpu_engine(cpu: bool) -> Iterator[None]:
    """
    While DefaultTrainer.__init__ runs: a DDP wrapper that works for CPU modules and, on
    the CPU, SimpleTrainer in place of AMPTrainer (which needs CUDA; with SOLVER.AMP.ENABLED
    the FCOS model autocasts itself to bfloat16 on the CPU).
    """
    import detectron2.engine.defaults as d2_defaults

    saved = d2_defaults.create_ddp_model, d2_defaults.AMPTrainer
    d2_defaults.create_ddp_model = _create_ddp_model
    if cpu:
        d2_defaults.AMPTrainer = SimpleTrainer
    try:
        yield
    finally:
        d2_defaults.create_ddp_model, d2_defaults.AMPTrainer = saved


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with: the evaluator of each dataset's type (engine/evaluators.py; COCO
    with a fast COCOeval where one exists, see compat.fast_cocoeval_class, and
    precision-recall curves), evaluation with test-time augmentation
    (:meth:`test_with_TTA`), metrics written every SOLVER.LOG_PERIOD iterations, atomic
    checkpoints, DDP on CPU workers, a class-count check of the datasets, and a
    non-finite-loss error that names the FCOS loss that went bad.
    """

    def __init__(self, cfg: CfgNode):
        cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        if cpu and cfg.SOLVER.AMP.ENABLED:
            logger.info("SOLVER.AMP.ENABLED on the CPU: training in bfloat16 autocast")
        with _cpu_engine(cpu):
            super().__init__(cfg)

    def build_hooks(self):
        # Replace the checkpointer before the hooks capture it.
        model = self._trainer.model
        self.checkpointer = FCOSCheckpointer(
            model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hook_list = super().build_hooks()
        for hook in hook_list:  # only rank 0 has one
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = self.cfg.SOLVER.LOG_PERIOD
        if self.cfg.TEST.AUG.ENABLED:
            # After training and its last evaluation, as Detectron2's tools/train_net.py
            # does, but before the writers so that metrics.json gets the "_TTA" results.
            tta = hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))
            writers = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter)]
            hook_list.insert(writers[0] if writers else len(hook_list), tta)
        return hook_list

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            model = self._trainer.model
            model = model.module if isinstance(model, DistributedDataParallel) else model
            losses = getattr(model, "last_losses", None) or {}
            bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
            last = (
                self.checkpointer.get_checkpoint_file()
                if self.checkpointer.has_checkpoint()
                else None
            )
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iter}: "
                f"{', '.join(f'{k}={v}' for k, v in bad.items()) or str(e)}. Training stopped "
                f"before the optimizer step; no checkpoint was written for this iteration "
                f"(last checkpoint: {last}). Try a lower SOLVER.BASE_LR or a longer warmup."
            ) from e

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's train loader over checked dataset dicts (see data/checks.py)."""
        names = list(cfg.DATASETS.TRAIN)
        dicts = get_detection_dataset_dicts(
            names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        check_num_classes(cfg, names)
        dicts, _ = sanitize_dataset_dicts(dicts, cfg.MODEL.FCOS.NUM_CLASSES, ", ".join(names))
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        check_num_classes(cfg, [dataset_name])
        check_files(dicts, dataset_name)
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(dicts, mapper=mapper)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """The evaluator of the dataset's ``evaluator_type``, see engine/evaluators.py."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> OrderedDict:
        """
        Evaluate ``model`` with test-time augmentation (cfg.TEST.AUG, see modeling/tta.py),
        as Detectron2's tools/train_net.py does: results under keys ending in "_TTA",
        evaluator outputs in ``OUTPUT_DIR/inference_TTA``. The loader keeps each image at
        its own size (INPUT.MIN_SIZE_TEST 0), so that every augmented copy is resized
        once from the original image rather than from the test-size copy.
        """
        logger.info("Running inference with test-time augmentation ...")
        tta_cfg = cfg.clone()
        tta_cfg.defrost()
        tta_cfg.INPUT.MIN_SIZE_TEST = 0  # ResizeShortestEdge(0) is the identity
        tta_cfg.freeze()
        tta_model = FCOSWithTTA(cfg, model)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, folder) for name in cfg.DATASETS.TEST]
        results = cls.test(tta_cfg, tta_model, evaluators)
        # Other processes than the main one may get None or {} from their evaluators.
        return OrderedDict((k + "_TTA", v) for k, v in (results or {}).items())
