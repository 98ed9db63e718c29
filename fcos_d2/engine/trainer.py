"""Detectron2's DefaultTrainer with the FCOS evaluator, checkpointer and CPU support."""

import argparse
import contextlib
import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    hooks,
)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules
from torch.nn.parallel import DistributedDataParallel

from ..config import complete_fcos_config, get_fcos_cfg
from ..data.checks import CheckedDatasetMapper, check_files, sanitize_dataset_dicts
from ..data.verify import SkipBadImages, check_train_images
from ..data.voc import register_voc_dataset, voc_class_names
from ..data.yolo import register_yolo_dataset
from ..errors import InputError
from ..modeling.tta import FCOSWithTTA
from ..registry import upgrade_legacy_names
from .best_checkpoint import BestCheckpointer
from .checkpoint import FCOSCheckpointer
from .ema import ModelEMA
from .evaluators import build_evaluator
from .preemption import PreemptionHook, SyncedPeriodicCheckpointer

__all__ = ["Trainer", "argument_parser", "check_num_classes", "create_ddp_model", "setup"]

logger = logging.getLogger("fcos_d2")

USER_TRAIN, USER_TEST = "coco_user_train", "coco_user_test"
#: Formats of the datasets given by path: --coco-train, --voc-train, --yolo-train (and -test).
USER_FORMATS = ("coco", "voc", "yolo")


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` plus options for COCO, Pascal VOC and YOLO
    data by path."""
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-train",
        nargs=2,
        metavar=("JSON", "IMAGE_DIR"),
        help="train on a COCO-format dataset (sets DATASETS.TRAIN and, unless given, "
        "MODEL.FCOS.NUM_CLASSES from its categories)",
    )
    parser.add_argument(
        "--coco-test",
        nargs=2,
        metavar=("JSON", "IMAGE_DIR"),
        help="evaluate on a COCO-format dataset (sets DATASETS.TEST)",
    )
    for key, does in (("train", "train on"), ("test", "evaluate on")):
        parser.add_argument(
            f"--voc-{key}",
            nargs=2,
            metavar=("DIR", "SPLIT"),
            help=f"{does} split SPLIT of a Pascal VOC folder (Annotations/, ImageSets/Main/, "
            "JPEGImages/; VOC evaluator)",
        )
        parser.add_argument(
            f"--yolo-{key}",
            metavar="DIR",
            help=f"{does} a YOLO folder (DIR/images/, DIR/labels/, DIR/data.yaml or "
            "DIR/classes.txt; COCO evaluator)",
        )
    parser.add_argument(
        "--class-names",
        metavar="A,B,C|FILE",
        help="class names of --voc-*/--yolo-* data: comma-separated, or a file with one a "
        "line (default: VOC: the annotations' names, sorted; YOLO: the folder's)",
    )
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


def _read_class_names(value: str) -> List[str]:
    """``--class-names``: a file with one name a line, else comma-separated names."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError(f"--class-names {value!r}: give distinct names, e.g. a,b,c")
    return names


def _register_coco(name: str, flag: str, paths: List[str]) -> int:
    json_file, image_root = paths
    if not os.path.isdir(image_root):
        raise InputError(f"{flag}: image folder not found: {image_root}")
    num = _coco_categories(json_file)
    if name not in MetadataCatalog.list():
        register_coco_instances(name, {}, json_file, image_root)
    return num


def _register_user_data(cfg: CfgNode, args: argparse.Namespace) -> None:
    opts = list(getattr(args, "opts", None) or [])
    given_num_classes = "MODEL.FCOS.NUM_CLASSES" in opts[::2]
    names_arg = getattr(args, "class_names", None)
    class_names = _read_class_names(names_arg) if names_arg else None
    voc = [getattr(args, f"voc_{k}", None) for k in ("train", "test")]
    voc_names = class_names
    if voc_names is None and any(voc):  # one list for both splits: the union of their names
        voc_names = sorted({n for v in voc if v for n in voc_class_names(*v)})
    registered = {}
    for key in ("TRAIN", "TEST"):
        flags = [f"{fmt}_{key.lower()}" for fmt in USER_FORMATS]
        given = [f for f in flags if getattr(args, f, None)]
        if len(given) > 1:
            raise InputError("give one of " + ", ".join("--" + f.replace("_", "-") for f in given))
        if not given:
            continue
        flag, value = "--" + given[0].replace("_", "-"), getattr(args, given[0])
        fmt = given[0].split("_")[0]
        name = f"{fmt}_user_{key.lower()}"
        if fmt == "coco":
            num, source = _register_coco(name, flag, value), f"{value[0]} has {{}} categories"
        elif fmt == "voc":
            num = len(register_voc_dataset(name, value[0], value[1], voc_names))
            source = f"{flag} {value[0]} {value[1]} has {{}} classes"
        else:
            num = len(register_yolo_dataset(name, value, class_names))
            source = f"{flag} {value} has {{}} classes"
        registered[key] = name
        setattr(cfg.DATASETS, key, (name,))
        if key == "TRAIN" and not given_num_classes:
            cfg.MODEL.FCOS.NUM_CLASSES = num
        elif num != cfg.MODEL.FCOS.NUM_CLASSES:
            raise InputError(
                f"{source.format(num)} but MODEL.FCOS.NUM_CLASSES is {cfg.MODEL.FCOS.NUM_CLASSES}"
            )
    if names_arg and not any(n.startswith(("voc", "yolo")) for n in registered.values()):
        raise InputError("--class-names is for --voc-train/--voc-test/--yolo-train/--yolo-test")
    if len(registered) == 2:
        train, test = (MetadataCatalog.get(registered[k]).get("thing_classes") for k in registered)
        if train and test and list(train) != list(test):
            raise InputError(
                f"the training data's classes {list(train)} differ from the test data's "
                f"{list(test)}: give --class-names"
            )


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``--config-file`` and overrides; CPU when no GPU exists; Detectron2 setup."""
    cfg = get_fcos_cfg(args.config_file, args.opts)
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


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """
    Detectron2's ``create_ddp_model`` that also works for CPU modules: with one process the
    model itself; else DistributedDataParallel, on the model's device (Detectron2's passes
    ``device_ids=[local_rank]``, which DDP rejects for a CPU module; with one visible GPU
    per task the device is cuda:0 whatever the local rank).
    """
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cpu":
        kwargs.pop("device_ids", None)
    else:
        kwargs["device_ids"] = [device.index if device.index is not None else 0]
    return DistributedDataParallel(model, **kwargs)


class _NamedLossError:
    """
    Mixed into Detectron2's SimpleTrainer / AMPTrainer: when the total loss is not finite,
    the FloatingPointError (raised before the optimizer step) names the FCOS losses that
    went bad. Detectron2 checks the loss in ``_write_metrics``, which gets the loss dict.
    """

    def _write_metrics(self, loss_dict, *args, **kwargs):
        try:
            return super()._write_metrics(loss_dict, *args, **kwargs)
        except FloatingPointError as e:
            bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
            named = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise FloatingPointError(named or str(e)) from e


class FCOSSimpleTrainer(_NamedLossError, SimpleTrainer):
    """Detectron2's SimpleTrainer; a non-finite loss error names the bad FCOS loss."""


class FCOSAMPTrainer(_NamedLossError, AMPTrainer):
    """Detectron2's AMPTrainer (fp16 on GPUs); a non-finite loss error names the bad loss."""


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with: the evaluator of each dataset's type (engine/evaluators.py; COCO
    with a fast COCOeval where one exists, see compat.fast_cocoeval_class, and
    precision-recall curves), evaluation with test-time augmentation
    (:meth:`test_with_TTA`), metrics written every SOLVER.LOG_PERIOD iterations, atomic
    checkpoints, the best checkpoint (TEST.BEST_CHECKPOINT_METRIC), an EMA of the weights
    (MODEL.EMA), DDP on CPU workers, a class-count check of the datasets, and a
    non-finite-loss error that names the FCOS loss that went bad.

    It builds its parts as DefaultTrainer does (same order, same ``build_*`` class
    methods), with a DDP wrapper that works on the CPU and, on the CPU, SimpleTrainer in
    place of AMPTrainer (which needs CUDA; with SOLVER.AMP.ENABLED the FCOS model autocasts
    itself, see SOLVER.AMP.CPU_PRECISION).
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        d2_logger = logging.getLogger("detectron2")
        if not d2_logger.isEnabledFor(logging.INFO):  # setup_logger is not called for d2
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(complete_fcos_config(cfg), comm.get_world_size())
        cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        # Constructed in DefaultTrainer's order.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if cpu and cfg.SOLVER.AMP.ENABLED:
            precision = getattr(model, "train_precision", "")
            logger.info(
                "SOLVER.AMP.ENABLED on the CPU: training in "
                f"{'bfloat16 autocast' if precision == 'bf16' else 'fp32'} "
                f"(SOLVER.AMP.CPU_PRECISION {cfg.SOLVER.AMP.CPU_PRECISION!r})"
            )
        model = create_ddp_model(model, broadcast_buffers=False)
        amp = cfg.SOLVER.AMP.ENABLED and not cpu
        self._trainer = (FCOSAMPTrainer if amp else FCOSSimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.ema = (
            ModelEMA(model, cfg.MODEL.EMA.DECAY, cfg.MODEL.EMA.DECAY_WARM_UP_FACTOR)
            if cfg.MODEL.EMA.ENABLED
            else None
        )
        checkpointables = {"ema": self.ema} if self.ema is not None else {}
        self.checkpointer = FCOSCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **checkpointables
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self) -> dict:
        """The iteration, the hooks' states and the optimizer's (and AMP's grad scaler's)
        state, as current Detectron2 writes them (0.6's DefaultTrainer leaves the optimizer
        out, so a resumed run would restart SGD's momentum)."""
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint has no optimizer state (written by Detectron2 0.6's "
                "DefaultTrainer): SGD's momentum starts from zero"
            )

    def resume_or_load(self, resume: bool = True) -> None:
        """DefaultTrainer's; with an EMA, it starts from the loaded weights unless the
        checkpoint carried one (a resumed EMA run). Resuming without an EMA from a
        checkpoint written with one continues from its training weights (its "ema" entry;
        its "model" holds the averages), with a warning."""
        restored = self.ema.num_loads if self.ema is not None else 0
        # DefaultTrainer.resume_or_load, keeping what the checkpointer did not load.
        left = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        if self.ema is not None and self.ema.num_loads == restored:
            self.ema.reset()
        held = (left or {}).get("ema", {}).get("held_weights")
        if self.ema is None and resume and held is not None:
            self.checkpointer.model.load_state_dict(held)
            logger.warning(
                "Resuming without MODEL.EMA.ENABLED from a checkpoint written with it: "
                "training continues from its training weights, not its averaged ones"
            )

    def evaluate(self, tta: bool = False) -> Optional[OrderedDict]:
        """Evaluate the trained model (its EMA weights with MODEL.EMA.ENABLED) on
        DATASETS.TEST, plainly or with test-time augmentation."""
        swapped = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        with swapped:
            if tta:
                return self.test_with_TTA(self.cfg, self.model)
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

    def build_hooks(self) -> List[hooks.HookBase]:
        """
        DefaultTrainer's hooks (timer, LR schedule, PreciseBN, periodic checkpoints,
        evaluation, writers every SOLVER.LOG_PERIOD iterations), plus the evaluation with
        TTA after training (TEST.AUG.ENABLED: after the last plain evaluation, before the
        writers, so that metrics.json gets the "_TTA" results) and the best checkpoint
        (TEST.BEST_CHECKPOINT_METRIC, after the evaluations). The periodic checkpoints are
        written by rank 0 with every worker told the outcome (a failed write stops all), and
        the last hook stops training on SOLVER.PREEMPT_SIGNALS with a checkpoint
        (engine/preemption.py).
        """
        cfg = self.cfg
        ret: List[Optional[hooks.HookBase]] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            bn_cfg = cfg.clone()
            bn_cfg.defrost()
            bn_cfg.DATALOADER.NUM_WORKERS = 0  # as DefaultTrainer: a loader of its own
            ret.append(
                hooks.PreciseBN(
                    cfg.TEST.EVAL_PERIOD,
                    self.model,
                    self.build_train_loader(bn_cfg),
                    cfg.TEST.PRECISE_BN.NUM_ITER,
                )
            )
        ret.append(SyncedPeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self.evaluate))
        if cfg.TEST.AUG.ENABLED:
            ret.append(hooks.EvalHook(0, lambda: self.evaluate(tta=True)))
        if comm.is_main_process():
            if cfg.TEST.BEST_CHECKPOINT_METRIC:
                ret.append(
                    BestCheckpointer(
                        cfg.TEST.EVAL_PERIOD,
                        self.checkpointer,
                        cfg.TEST.BEST_CHECKPOINT_METRIC,
                        mode=cfg.TEST.BEST_CHECKPOINT_MODE,
                    )
                )
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        self._preemption = PreemptionHook(self.checkpointer, cfg.SOLVER.PREEMPT_SIGNALS)
        ret.append(self._preemption)
        return ret

    def after_train(self) -> None:
        """The hooks' ``after_train``; after a preemption at the last iteration, without the
        final evaluation (``--resume`` runs it)."""
        preemption = getattr(self, "_preemption", None)
        if preemption is None or preemption.stopped_at is None:
            super().after_train()
            return
        self.storage.iter = self.iter
        for h in self._hooks:
            if isinstance(h, hooks.EvalHook):
                continue
            if isinstance(h, hooks.PeriodicWriter) and (
                (self.iter + 1) % h._period == 0 or self.iter >= self.max_iter - 1
            ):
                # It wrote this iteration in after_step; a second write of the same iteration
                # divides by zero in Detectron2's CommonMetricPrinter (ETA estimate).
                for writer in h._writers:
                    writer.close()
                continue
            h.after_train()

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as e:
            last = (
                self.checkpointer.get_checkpoint_file()
                if self.checkpointer.has_checkpoint()
                else None
            )
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iter}: {e}. Training stopped "
                f"before the optimizer step; no checkpoint was written for this iteration "
                f"(last checkpoint: {last}). Try a lower SOLVER.BASE_LR or a longer warmup."
            ) from e
        if self.ema is not None:
            self.ema.update()

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's train loader over checked dataset dicts (see data/checks.py), their
        images verified first with DATALOADER.VERIFY_IMAGES, and a mapper that skips images
        that fail to decode (DATALOADER.MAX_BAD_IMAGES; see data/verify.py)."""
        names = list(cfg.DATASETS.TRAIN)
        dicts = get_detection_dataset_dicts(
            names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        check_num_classes(cfg, names)
        dicts, _ = sanitize_dataset_dicts(dicts, cfg.MODEL.FCOS.NUM_CLASSES, ", ".join(names))
        loader_cfg = cfg.DATALOADER  # bad image files: see data/verify.py
        if loader_cfg.get("VERIFY_IMAGES", False):
            dicts = check_train_images(dicts, loader_cfg.SKIP_BAD_IMAGES, ", ".join(names))
        dataset = DatasetFromList(dicts, copy=False)
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        mapper = SkipBadImages(mapper, dataset, loader_cfg.get("MAX_BAD_IMAGES", 10))
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

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
