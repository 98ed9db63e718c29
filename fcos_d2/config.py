"""
FCOS config keys. Every FCOS key lives under ``cfg.MODEL.FCOS`` and is documented here,
as are the engine keys that Detectron2's yacs config lacks (``SOLVER.LOG_PERIOD``,
``SOLVER.AMP.CPU_PRECISION``, ``TEST.BEST_CHECKPOINT_*``, ``MODEL.EMA.*``,
``SOLVER.PREEMPT_SIGNALS``).
"""

import difflib
import os
from typing import Any, Iterable, List, Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import InputError

__all__ = [
    "UnknownConfigKeyError",
    "add_fcos_config",
    "check_choice",
    "complete_fcos_config",
    "get_fcos_cfg",
]

#: Config nodes that are fcos-d2's alone: a key under them that ``add_fcos_config`` does
#: not define is a typo, also in configs merged with ``set_new_allowed(True)``.
STRICT_NODES = ("MODEL.FCOS", "MODEL.EMA")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a ValueError naming ``MODEL.FCOS.<key>`` if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"MODEL.FCOS.{key} must be one of {tuple(choices)}, got {value!r}")


class UnknownConfigKeyError(InputError, KeyError):
    """A config key that does not exist; the message names it and the nearest valid key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def add_fcos_config(cfg: CN) -> None:
    """
    Add the FCOS keys (with their paper defaults) to a Detectron2 config, in place. A key
    under ``MODEL.FCOS`` or ``MODEL.EMA`` that does not exist (a typo) is accepted by
    ``merge_from_file`` and refused when the model is built, naming the nearest valid key
    (:func:`complete_fcos_config`); :func:`get_fcos_cfg` refuses it at once.
    """
    cfg.MODEL.FCOS = CN()
    _C = cfg.MODEL.FCOS

    # ---------------------------------------------------------------- general
    # Number of foreground classes (COCO: 80). Background is index NUM_CLASSES.
    _C.NUM_CLASSES = 80
    # Backbone features fed to the head, from fine to coarse (strides 8..128).
    _C.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]

    # --------------------------------------------------------------- backbone
    # Input of the P6/P7 block of `build_fcos_resnet_fpn_backbone`: "p5" (FCOS
    # paper) or "res5" (RetinaNet-style, from C5).
    _C.TOP_BLOCK_IN_FEATURE = "p5"

    # -------------------------------------------------------------- locations
    # Location (x, y) of a level with stride s maps to the image point
    # (floor(s * OFFSET) + x * s, floor(s * OFFSET) + y * s). 0.5 = paper
    # (floor(s / 2)); torchvision's FCOS uses 0.0.
    _C.LOCATION_OFFSET = 0.5
    # Spacing of a level's locations: "level" (its stride s, paper) or
    # "padded_size_div_grid" (per axis, padded batch size // feature map size, as
    # torchvision's AnchorGenerator; differs from "level" where the padded size is not a
    # multiple of s, e.g. P6/P7 at 800x1344: 800 // 13 = 61, not 64). Only the locations
    # move: ranges, center sampling and box decoding keep the level's stride, as in
    # torchvision.
    _C.LOCATION_STRIDE = "level"

    # ------------------------------------------------------------------- head
    # Head class in FCOS_HEAD_REGISTRY.
    _C.HEAD_NAME = "FCOSHead"
    # 3x3 convs in each of the classification and regression towers.
    _C.NUM_CONVS = 4
    # Norm of the tower convs: "GN" (GroupNorm(32), paper), "BN", "SyncBN"
    # (one BatchNorm per level), or "" (none).
    _C.NORM = "GN"
    # Initial foreground probability of the class logits (bias init).
    _C.PRIOR_PROB = 0.01
    # Deformable convolution (DCNv2: learned offsets and modulation) as the last conv of
    # each tower, as AdelaiDet's MODEL.FCOS.USE_DEFORMABLE (its "dcnv2" models). Runs with
    # torchvision's op where Detectron2's compiled one is unavailable (modeling/deform.py).
    _C.USE_DEFORMABLE = False
    # Learnable scalar s_i per level multiplying the box outputs. With it off
    # the box branch uses s_i = 1 (torchvision's FCOS has no scales).
    _C.USE_SCALE = True
    # Box parameterisation. False (paper): distance = exp(s_i * x).
    # True ("normalised regression" improvement): distance = ReLU(s_i * x) * stride.
    _C.NORM_REG_TARGETS = False
    # Centerness predicted from the classification tower (False, paper) or
    # from the regression tower (True, improvement).
    _C.CENTERNESS_ON_REG = False

    # --------------------------------------------------------------- assigner
    # Assigner class in FCOS_ASSIGNER_REGISTRY.
    _C.ASSIGNER_NAME = "FCOSAssigner"
    # Size-of-interest bounds m_1..m_4 between levels. A location on level i is
    # positive only if max(l, t, r, b) lies in the range from m_{i-1} to m_i, with
    # m_0 = 0 and m_5 = inf. Needs len(IN_FEATURES) - 1 values.
    _C.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # How max(l, t, r, b) is compared with those bounds: "closed", m_{i-1} <= max <= m_i
    # (paper, sec. 3.2; the original FCOS and AdelaiDet), so a max equal to m_i counts for
    # level i and for level i + 1; or "open", m_{i-1} < max < m_i (torchvision,
    # Detectron2's own FCOS), for neither.
    _C.SIZE_RANGE_BOUNDS = "closed"
    # Areas compared by the minimal-area rule for locations inside several boxes
    # (ties: the box listed first wins). "wh": w * h (paper, AdelaiDet);
    # "wh_plus_one": (w + 1) * (h + 1) (original FCOS, maskrcnn-benchmark's BoxList.area);
    # "torchvision": float32(1e8 - w * h), so areas within 8 px^2 of each other tie.
    _C.MATCH_AREA = "wh"
    # Center sampling radius r (in strides): with r > 0 a location is positive
    # only inside the box [cx - r*s, cx + r*s] x [cy - r*s, cy + r*s] clipped to
    # the ground-truth box. 0 disables it (paper); 1.5 is the improvement.
    _C.CENTER_SAMPLING_RADIUS = 0.0
    # Bound on locations x boxes pairs evaluated at once (memory cap for
    # images with thousands of boxes); larger problems are processed in chunks.
    _C.ASSIGNER_MAX_PAIRS = 4_000_000
    # ATSS (ASSIGNER_NAME "ATSSAssigner", Zhang et al., CVPR 2020; fcos_d2/modeling/atss.py):
    # per box, the ATSS_TOPK locations per level nearest to the box centre are candidates;
    # positives are candidates whose virtual square anchor (ATSS_ANCHOR_SCALE x stride wide,
    # centred on the location) has an IoU with the box >= mean + std of the candidates' IoUs
    # and whose location lies inside the box. SIZES_OF_INTEREST, CENTER_SAMPLING_RADIUS,
    # SIZE_RANGE_BOUNDS and MATCH_AREA are not used by ATSS.
    _C.ATSS_TOPK = 9
    _C.ATSS_ANCHOR_SCALE = 8.0

    # ----------------------------------------------------------------- losses
    # Sigmoid focal loss of the class scores, over all locations: alpha weighs the
    # positives against the negatives (paper: 0.25).
    _C.FOCAL_LOSS_ALPHA = 0.25
    # Focal loss gamma, the down-weighting of easy examples (paper: 2.0).
    _C.FOCAL_LOSS_GAMMA = 2.0
    # Box loss on positives: "iou" (-log IoU, paper), "giou" (1 - GIoU) or
    # "linear_iou" (1 - IoU).
    _C.LOC_LOSS_TYPE = "iou"
    # Smoothing term of the IoU: IoU = (I + 1) / (U + 1) with the 1 in "pixel"^2 or in
    # "stride"^2 units (the units of the regression targets: the original FCOS uses pixels
    # with NORM_REG_TARGETS off and strides with it on; AdelaiDet always strides), or ""
    # for none, IoU = I / U (paper, torchvision).
    _C.IOU_LOSS_SMOOTH = ""
    # Weight each positive's box loss by its centerness target and normalise by
    # the sum of those targets (improvement) instead of by the number of positives.
    _C.LOC_LOSS_WEIGHT_BY_CENTERNESS = False
    # Multipliers of loss_fcos_cls, loss_fcos_loc and loss_fcos_ctr.
    _C.LOSS_WEIGHT_CLS = 1.0
    _C.LOSS_WEIGHT_LOC = 1.0
    _C.LOSS_WEIGHT_CTR = 1.0

    # -------------------------------------------------------------- inference
    # Candidates need a score above this threshold (per level, before NMS).
    _C.SCORE_THRESH_TEST = 0.05
    # What SCORE_THRESH_TEST is compared with: the class probability (False,
    # paper) or the final score, class prob x centerness (or its square root
    # when SQRT_SCORE) (True, torchvision).
    _C.THRESH_WITH_CENTERNESS = False
    # Candidates kept per level (highest final scores) before NMS.
    _C.TOPK_CANDIDATES_TEST = 1000
    # IoU threshold of the class-aware NMS.
    _C.NMS_THRESH_TEST = 0.6
    # Final score = sqrt(class prob x centerness) instead of the product. The
    # ranking is unchanged; only the reported score values (and a threshold
    # applied to them) differ.
    _C.SQRT_SCORE = False
    # (Detections kept per image: Detectron2's cfg.TEST.DETECTIONS_PER_IMAGE.)
    # Clipping of the decoded boxes before NMS: "image" (to [0, w] x [0, h] of the resized
    # image: torchvision), "image_minus_one" (to [0, w - 1] x [0, h - 1]: original FCOS)
    # or "" (none: AdelaiDet). Detectron2's detector_postprocess clips the final boxes to
    # the output size in every case.
    _C.CLIP_BOXES_TEST = "image"
    # NMS with the legacy IoU of maskrcnn-benchmark (original FCOS): widths x1 - x0 + 1.
    _C.NMS_LEGACY_PLUS_ONE = False

    # ------------------------------------------------- test-time augmentation
    # Which sizes and flips are run is Detectron2's TEST.AUG (ENABLED, MIN_SIZES,
    # MAX_SIZE, FLIP; see fcos_d2/modeling/tta.py). How the detections of the augmented
    # copies, mapped back to the image, are merged: "nms" (class-aware NMS with
    # NMS_THRESH_TEST, as the original FCOS) or "voting" (the same NMS, then each kept box
    # becomes the score-weighted mean of the boxes of its class that overlap it with IoU
    # >= TTA_VOTING_IOU; its score is kept).
    _C.TTA_MERGE = "nms"
    _C.TTA_VOTING_IOU = 0.8

    # ------------------------------------------------------------------ speed
    # These keep the parameters and state dict, and the fp32 outputs up to float rounding
    # (see fcos_d2/modeling/fusion.py).
    # Compute each Conv2d + FrozenBatchNorm2d of the backbone as one convolution with
    # the norm folded into its weights (training and inference), and, at inference, each
    # head conv + BatchNorm (NORM "BN" or "SyncBN", per level running statistics) likewise.
    _C.FOLD_FROZEN_BN = True
    # Keep weights and activations in channels-last memory format (faster convolutions
    # on CPUs with oneDNN and on GPUs with tensor cores).
    _C.CHANNELS_LAST = True
    # Inference precision: "" (fp32), "bf16" (autocast; CPUs with AVX512-BF16/AMX, and
    # GPUs), "fp16" (autocast, GPU only) or "auto": bf16 where the device executes it
    # natively, else fp32 on the CPU (fp16 on a GPU without bf16); the choice and the CPU's
    # capability are logged (fcos_d2/modeling/precision.py). An explicit "bf16" on a CPU
    # without native bf16 runs emulated, about 5-10x slower than fp32, with a warning.
    # Training precision is SOLVER.AMP.ENABLED (and SOLVER.AMP.CPU_PRECISION on the CPU).
    _C.INFERENCE_PRECISION = ""
    # Run backbone + head through torch.compile (the first call of each input shape
    # compiles, which takes minutes on a CPU). Off by default.
    _C.COMPILE = False

    # ---------------------------------------------------------------- engine
    # Iterations between writes of metrics.json, the event file and the console log
    # (Detectron2's DefaultTrainer writes every 20; its LazyConfig calls this
    # train.log_period). 1 records every iteration's losses.
    if "LOG_PERIOD" not in cfg.SOLVER:
        cfg.SOLVER.LOG_PERIOD = 20
    # What SOLVER.AMP.ENABLED trains in on the CPU (on GPUs it is Detectron2's fp16
    # AMPTrainer): "auto" (bf16 autocast where the CPU executes bf16 natively, AVX512-BF16 or
    # AMX, else fp32, with a log line naming the CPU's capability), "bf16" (always; emulated
    # and about 5-10x slower than fp32 on other CPUs, with a warning) or "fp32".
    if "CPU_PRECISION" not in cfg.SOLVER.AMP:
        cfg.SOLVER.AMP.CPU_PRECISION = "auto"
    # Keep the checkpoint of the best evaluation (Detectron2's BestCheckpointer, see
    # fcos_d2/engine/best_checkpoint.py): the name of an evaluation metric as it appears in
    # metrics.json, e.g. "bbox/AP" or "bbox_TTA/AP"; "" (default) keeps none. The best model
    # is written to OUTPUT_DIR/model_best.pth after each evaluation that improves the metric
    # (TEST.EVAL_PERIOD and the final evaluation), with its value and iteration logged and
    # stored in the file; --resume continues from the best value found so far.
    if "BEST_CHECKPOINT_METRIC" not in cfg.TEST:
        cfg.TEST.BEST_CHECKPOINT_METRIC = ""
    # "max" (AP and similar) or "min" (e.g. a loss): which direction of the metric is better.
    if "BEST_CHECKPOINT_MODE" not in cfg.TEST:
        cfg.TEST.BEST_CHECKPOINT_MODE = "max"
    # Exponential moving average of the weights (as d2go's and detrex's MODEL_EMA /
    # train.model_ema; fcos_d2/engine/ema.py): after every optimizer step, on every worker,
    # e <- DECAY * e + (1 - DECAY) * w for every parameter and floating-point buffer
    # (integer buffers are copied). When ENABLED, evaluation during and after training uses
    # the averaged weights, and every checkpoint (model_final.pth, model_best.pth, the
    # periodic ones) stores them as its "model", so that --eval-only, DefaultPredictor and
    # export use them; the training weights travel in the checkpoint's "ema" entry, which
    # --resume restores.
    if "EMA" not in cfg.MODEL:
        cfg.MODEL.EMA = CN()
        cfg.MODEL.EMA.ENABLED = False
        cfg.MODEL.EMA.DECAY = 0.999
    # Warm-up of the decay (d2go's MODEL_EMA.DECAY_WARM_UP_FACTOR): with a factor W >= 0,
    # update n (1, 2, ...) uses min(DECAY, (1 + n) / (W + n)), so that the weights training
    # starts from fade out early; -1: DECAY from the first update. Without it, DECAY^MAX_ITER
    # of the starting weights stays in the average: 9% for 0.999 over the quickstart's 2400
    # iterations, whose averaged weights scored 16.3 AP against the training weights' 49.6
    # (docs/training.md, "EMA of the weights").
    if "DECAY_WARM_UP_FACTOR" not in cfg.MODEL.EMA:
        cfg.MODEL.EMA.DECAY_WARM_UP_FACTOR = -1

    # ------------------------------------------------------- bad training images
    # (fcos_d2/data/verify.py; Detectron2's DATALOADER node, keys added if missing.)
    # Before training, decode every image of DATASETS.TRAIN in a thread pool (Pillow, a full
    # decode: Image.verify() misses truncated JPEGs) and check its size against the
    # dataset's; the bad files are listed at once (path, image id, reason) and training does
    # not start, unless SKIP_BAD_IMAGES. Off by default (it reads the whole dataset once).
    if "VERIFY_IMAGES" not in cfg.DATALOADER:
        cfg.DATALOADER.VERIFY_IMAGES = False
    # With VERIFY_IMAGES: drop the images that fail (their count and paths are logged)
    # and train on the rest, instead of stopping.
    if "SKIP_BAD_IMAGES" not in cfg.DATALOADER:
        cfg.DATALOADER.SKIP_BAD_IMAGES = False
    # During training, an image that fails to decode is logged with its path and replaced
    # by another sample, up to this many distinct files per data-loader worker; one more
    # stops training with the list of them. 0 stops at the first.
    if "MAX_BAD_IMAGES" not in cfg.DATALOADER:
        cfg.DATALOADER.MAX_BAD_IMAGES = 10

    # ------------------------------------------------------------ preemption
    # Signals that end training cleanly (fcos_d2/engine/preemption.py; docs/distributed.md):
    # every worker finishes its iteration, the workers agree to stop after the same one
    # (though only one may have been signalled), rank 0 writes model_<iter>.pth and
    # last_checkpoint, and every process exits with status 75 (EX_TEMPFAIL); --resume
    # continues at the next iteration. SIGTERM is what SLURM, Kubernetes and torchrun send
    # on preemption; SIGUSR1 is for an early warning, e.g. `#SBATCH --signal=USR1@120`.
    # () keeps the default actions (the process dies without a checkpoint).
    if "PREEMPT_SIGNALS" not in cfg.SOLVER:
        cfg.SOLVER.PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")
    _accept_strict_nodes(cfg)


def _accept_strict_nodes(cfg: CN) -> None:
    # yacs refuses an unknown key with a bare KeyError and no hint. Under fcos-d2's own nodes
    # merging accepts it instead, and the one check that both routes of loading a config
    # reach (get_fcos_cfg right after merging, the model builders through
    # complete_fcos_config) refuses it naming the nearest valid key.
    for dotted in STRICT_NODES:
        node = _node(cfg, dotted)
        if node is not None:
            node.set_new_allowed(True)


def _defaults() -> CN:
    cfg = get_cfg()
    add_fcos_config(cfg)
    return cfg


def _node(cfg: CN, dotted: str) -> Optional[CN]:
    for name in dotted.split("."):
        cfg = cfg.get(name) if isinstance(cfg, CN) else None
    return cfg if isinstance(cfg, CN) else None


def _keys(node: CN, prefix: str) -> Iterable[str]:
    for k, v in node.items():
        yield from _keys(v, f"{prefix}.{k}") if isinstance(v, CN) else (f"{prefix}.{k}",)


def nearest_key(full_key: str, defaults: Optional[CN] = None) -> Optional[str]:
    """The valid key closest in spelling to ``full_key`` (e.g. ``MODEL.FCOS.NUM_CLASES`` ->
    ``MODEL.FCOS.NUM_CLASSES``): among the keys of its deepest existing parent node first,
    then among all keys of the config; None if nothing is close."""
    defaults = defaults if defaults is not None else _defaults()
    parts = full_key.split(".")
    node, depth = defaults, 0
    while depth < len(parts) - 1 and isinstance(node.get(parts[depth]), CN):
        node, depth = node[parts[depth]], depth + 1
    prefix = ".".join(parts[:depth])
    rest = ".".join(parts[depth:])
    local = [k[len(prefix) + 1 :] if prefix else k for k in _keys(node, prefix or "_")]
    if not prefix:
        local = [k[2:] for k in local]
    match = difflib.get_close_matches(rest, local, n=1, cutoff=0.6)
    if match:
        return f"{prefix}.{match[0]}" if prefix else match[0]
    match = difflib.get_close_matches(full_key, [k[2:] for k in _keys(defaults, "_")], n=1)
    return match[0] if match else None


def unknown_key_error(full_key: str, source: str = "", defaults: Optional[CN] = None):
    """An :class:`UnknownConfigKeyError` naming ``full_key``, the nearest valid key and the
    file or route it came from."""
    near = nearest_key(full_key, defaults)
    where = f"{source}: " if source else ""
    hint = f" (did you mean {near}?)" if near else ""
    return UnknownConfigKeyError(f"{where}unknown config key {full_key}{hint}")


def _unknown_strict_keys(cfg: CN, defaults: CN) -> List[str]:
    unknown = []
    for dotted in STRICT_NODES:
        node, ref = _node(cfg, dotted), _node(defaults, dotted)
        if node is None or ref is None:
            continue
        valid = set(_keys(ref, dotted))
        unknown += [k for k in _keys(node, dotted) if k not in valid]
    return unknown


def _missing_keys(cfg: CN, defaults: CN) -> bool:
    for k, v in defaults.items():
        if k not in cfg:
            return True
        if isinstance(v, CN) and (not isinstance(cfg[k], CN) or _missing_keys(cfg[k], v)):
            return True
    return False


def complete_fcos_config(cfg: CN) -> CN:
    """
    The config that ``get_cfg()`` + :func:`add_fcos_config` + merging ``cfg`` gives: the
    FCOS defaults for every key ``cfg`` lacks, ``cfg``'s values kept. For configs that
    third-party code builds from an fcos-d2 yaml without :func:`add_fcos_config`
    (``cfg = get_cfg(); cfg.set_new_allowed(True); cfg.merge_from_file(path)``, or through
    ``_BASE_`` chains), as wrappers of Detectron2 models do. The model builders call it, so
    such a config builds the same model. Returns ``cfg`` itself when nothing is missing,
    else a new config (frozen if ``cfg`` was). Raises :class:`UnknownConfigKeyError` for a
    key under ``MODEL.FCOS`` or ``MODEL.EMA`` that does not exist (a typo), naming the
    nearest valid one; keys elsewhere that Detectron2 lacks are kept (other extensions').
    """
    defaults = _defaults()
    unknown = _unknown_strict_keys(cfg, defaults)
    if unknown:
        raise unknown_key_error(unknown[0], defaults=defaults)
    if not _missing_keys(cfg, defaults):
        return cfg
    defaults.set_new_allowed(True)
    defaults.merge_from_other_cfg(cfg)
    defaults.set_new_allowed(False)
    if cfg.is_frozen():
        defaults.freeze()
    return defaults


def get_fcos_cfg(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """
    ``get_cfg()`` with the FCOS keys (:func:`add_fcos_config`), merged from
    ``config_file`` (if given) and the ``KEY VALUE`` list ``opts``. A key that does not
    exist raises :class:`UnknownConfigKeyError` naming the file (or "command line"), the
    key and the nearest valid key; a missing file raises :class:`InputError`.
    """
    cfg = _defaults()
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise InputError(f"config file not found: {config_file}")
        _merge(cfg, lambda: cfg.merge_from_file(config_file), config_file)
    if opts:
        _merge(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line config override")
    return cfg


def _merge(cfg: CN, merge, source: str) -> None:
    try:
        merge()
    except (KeyError, AssertionError, ValueError) as e:
        msg = str(e.args[0] if e.args else e)
        # yacs: "Non-existent config key: K" (files), "Non-existent key: K" (lists)
        for prefix in ("Non-existent config key: ", "Non-existent key: "):
            if msg.startswith(prefix):
                raise unknown_key_error(msg[len(prefix) :], source) from None
        raise InputError(f"{source}: {msg}") from e
    unknown = _unknown_strict_keys(cfg, _defaults())
    if unknown:
        raise unknown_key_error(unknown[0], source)
