"""
Convert published FCOS checkpoints (torchvision, AdelaiDet, the original FCOS repository)
and torchvision ImageNet ResNets to fcos-d2's parameter names.

Each source is a list of renaming rules; a key that no rule covers is an error, so a
checkpoint of another kind is refused instead of silently half-converted. Keys that have
no counterpart in fcos-d2 (e.g. BatchNorm's ``num_batches_tracked``) are dropped and
reported by name.
"""

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "SOURCES",
    "ConversionResult",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_source",
    "load_state_dict",
]

Rule = Tuple[str, Callable[[re.Match], str]]
#: Detectron2's FrozenBatchNorm2d epsilon.
FROZEN_BN_EPS = 1e-5
_BN = r"(weight|bias|running_mean|running_var)"


def _stage(m: re.Match, group: int = 1) -> str:
    return f"res{int(m.group(group)) + 1}"


def _resnet_rules(prefix: str, stem: str) -> List[Rule]:
    """torchvision-style ResNet names (layerK.i.convJ / bnJ / downsample.{0,1}) below prefix."""
    out = "backbone.bottom_up"
    return [
        (rf"^{prefix}{stem}conv1\.weight$", lambda m: f"{out}.stem.conv1.weight"),
        (rf"^{prefix}{stem}bn1\.{_BN}$", lambda m: f"{out}.stem.conv1.norm.{m.group(1)}"),
        (
            rf"^{prefix}layer(\d)\.(\d+)\.conv(\d)\.weight$",
            lambda m: f"{out}.{_stage(m)}.{m.group(2)}.conv{m.group(3)}.weight",
        ),
        (
            rf"^{prefix}layer(\d)\.(\d+)\.bn(\d)\.{_BN}$",
            lambda m: f"{out}.{_stage(m)}.{m.group(2)}.conv{m.group(3)}.norm.{m.group(4)}",
        ),
        (
            rf"^{prefix}layer(\d)\.(\d+)\.downsample\.0\.weight$",
            lambda m: f"{out}.{_stage(m)}.{m.group(2)}.shortcut.weight",
        ),
        (
            rf"^{prefix}layer(\d)\.(\d+)\.downsample\.1\.{_BN}$",
            lambda m: f"{out}.{_stage(m)}.{m.group(2)}.shortcut.norm.{m.group(3)}",
        ),
    ]


_RULES: Dict[str, List[Rule]] = {
    "torchvision": _resnet_rules(r"backbone\.body\.", "")
    + [
        (
            r"^backbone\.fpn\.inner_blocks\.(\d)(?:\.0)?\.(weight|bias)$",
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 3}.{m.group(2)}",
        ),
        (
            r"^backbone\.fpn\.layer_blocks\.(\d)(?:\.0)?\.(weight|bias)$",
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 3}.{m.group(2)}",
        ),
        (
            r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$",
            lambda m: "backbone.top_block.{}.{}".format(*m.groups()),
        ),
        (
            r"^head\.classification_head\.conv\.(\d+)\.(weight|bias)$",
            lambda m: "head.cls_tower.{}.{}".format(*m.groups()),
        ),
        (
            r"^head\.classification_head\.cls_logits\.(weight|bias)$",
            lambda m: f"head.cls_logits.{m.group(1)}",
        ),
        (
            r"^head\.regression_head\.conv\.(\d+)\.(weight|bias)$",
            lambda m: "head.bbox_tower.{}.{}".format(*m.groups()),
        ),
        (
            r"^head\.regression_head\.bbox_reg\.(weight|bias)$",
            lambda m: f"head.bbox_pred.{m.group(1)}",
        ),
        (
            r"^head\.regression_head\.bbox_ctrness\.(weight|bias)$",
            lambda m: f"head.centerness.{m.group(1)}",
        ),
    ],
    "fcos": _resnet_rules(r"backbone\.body\.", r"stem\.")
    + [
        (
            r"^backbone\.fpn\.fpn_inner(\d)\.(weight|bias)$",
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        (
            r"^backbone\.fpn\.fpn_layer(\d)\.(weight|bias)$",
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        (
            r"^backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)$",
            lambda m: "backbone.top_block.{}.{}".format(*m.groups()),
        ),
        (
            r"^rpn\.head\.(cls_tower|bbox_tower)\.(\d+)\.(weight|bias)$",
            lambda m: "head.{}.{}.{}".format(*m.groups()),
        ),
        (
            r"^rpn\.head\.(cls_logits|bbox_pred|centerness)\.(weight|bias)$",
            lambda m: "head.{}.{}".format(*m.groups()),
        ),
        (r"^rpn\.head\.scales\.(\d)\.scale$", lambda m: f"head.scales.{m.group(1)}.scale"),
    ],
    "adelaidet": [
        (
            r"^(backbone\.bottom_up\.(stem\.conv1|res[2-5]\.\d+\.(conv[123]|shortcut))"
            r"\.(weight|norm\.(weight|bias|running_mean|running_var)))$",
            lambda m: m.group(1),
        ),
        # Deformable ResNet blocks (RESNETS.DEFORM_ON_PER_STAGE): the offset (and DCNv2 mask)
        # convolution of each block's conv2; conv2 itself keeps its name.
        (
            r"^(backbone\.bottom_up\.res[2-5]\.\d+\.conv2_offset\.(weight|bias))$",
            lambda m: m.group(1),
        ),
        (r"^(backbone\.(fpn_lateral|fpn_output)\d\.(weight|bias))$", lambda m: m.group(1)),
        (r"^(backbone\.top_block\.(p6|p7)\.(weight|bias))$", lambda m: m.group(1)),
        (
            # (offset|conv): the tower's DFConv2d with FCOS.USE_DEFORMABLE (fcos-d2's
            # DeformableConv2d has the same two children).
            r"^proposal_generator\.fcos_head\.(cls_tower|bbox_tower)\.(\d+)\."
            r"((?:offset\.|conv\.)?(?:weight|bias))$",
            lambda m: "head.{}.{}.{}".format(*m.groups()),
        ),
        (
            r"^proposal_generator\.fcos_head\.(cls_logits|bbox_pred)\.(weight|bias)$",
            lambda m: "head.{}.{}".format(*m.groups()),
        ),
        (
            r"^proposal_generator\.fcos_head\.ctrness\.(weight|bias)$",
            lambda m: f"head.centerness.{m.group(1)}",
        ),
        (
            r"^proposal_generator\.fcos_head\.scales\.(\d)\.scale$",
            lambda m: f"head.scales.{m.group(1)}.scale",
        ),
    ],
    "torchvision-resnet": _resnet_rules("", ""),
}

# Keys without a counterpart in fcos-d2: dropped and reported.
_DROP = {
    "torchvision": [r"\.num_batches_tracked$"],
    "fcos": [r"\.num_batches_tracked$"],
    "adelaidet": [r"\.num_batches_tracked$", r"^pixel_(mean|std)$"],
    "torchvision-resnet": [r"\.num_batches_tracked$", r"^fc\.(weight|bias)$"],
}

SOURCES: Tuple[str, ...] = tuple(_RULES)

# What identifies each source's checkpoints (first match wins).
_SIGNATURES = [
    ("adelaidet", r"^proposal_generator\.fcos_head\."),
    ("fcos", r"^rpn\.head\.cls_tower\."),
    ("torchvision", r"^head\.classification_head\."),
    ("fcos-d2", r"^head\.cls_tower\."),
    ("torchvision-resnet", r"^layer1\.0\.conv1\.weight$"),
    ("detectron2 R-CNN/RetinaNet", r"^(roi_heads|proposal_generator\.rpn_head|head\.cls_subnet)\."),
]


@dataclass
class ConversionResult:
    """A converted state dict and what was left out."""

    state_dict: Dict[str, Tensor]
    source: str
    dropped: List[str] = field(default_factory=list)


def load_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, Tensor]:
    """
    The parameters in a checkpoint file: a plain state dict, or the ``"model"`` /
    ``"state_dict"`` entry of a training checkpoint; a ``module.`` (DDP) prefix is removed.

    Files are read with ``torch.load(weights_only=True)``; ``allow_pickle=True`` also
    unpickles arbitrary Python objects (only for files you trust: unpickling runs code).
    """
    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        hint = (
            ""
            if allow_pickle
            else " (a checkpoint you trust that holds Python objects: retry with --allow-pickle)"
        )
        raise InputError(f"cannot read checkpoint {path}: {e}{hint}") from e
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path} holds no state dict (got {type(data).__name__})")
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if not tensors:
        raise InputError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def detect_source(state_dict: Dict[str, Tensor]) -> Optional[str]:
    """The kind of checkpoint these keys come from, or None if unknown."""
    for name, pattern in _SIGNATURES:
        if any(re.search(pattern, k) for k in state_dict):
            return name
    return None


def _coco80_rows() -> List[int]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def convert_state_dict(
    state_dict: Dict[str, Tensor],
    source: str,
    *,
    num_classes: Optional[int] = None,
    coco_80: Optional[bool] = None,
) -> ConversionResult:
    """
    Rename ``state_dict`` (of kind ``source``) to fcos-d2 names.

    Args:
        source: one of :data:`SOURCES`.
        num_classes: if given, the class count the result must have.
        coco_80: torchvision only: keep the 80 COCO classes of its 91 outputs (indexed by
            COCO category id) in Detectron2's contiguous order. Default: on when the
            checkpoint has 91 classes.
    """
    if source not in _RULES:
        raise InputError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    found = detect_source(state_dict)
    if found is not None and found != source:
        raise InputError(
            f"this checkpoint looks like a {found} checkpoint, not {source} "
            f"(e.g. key {next(iter(state_dict))!r}); pass --source {found}"
            if found in SOURCES
            else f"this checkpoint looks like a {found} checkpoint, not {source}"
        )
    rules = [(re.compile(p), f) for p, f in _RULES[source]]
    drops = [re.compile(p) for p in _DROP.get(source, [])]
    out: Dict[str, Tensor] = {}
    dropped, unknown = [], []
    for key, value in state_dict.items():
        if any(d.search(key) for d in drops):
            dropped.append(key)
            continue
        for pattern, rename in rules:
            m = pattern.match(key)
            if m:
                new = rename(m)
                if new in out:
                    raise InputError(f"two keys map to {new} (second: {key})")
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise InputError(
            f"{len(unknown)} key(s) are not part of a {source} FCOS checkpoint: {shown}"
        )
    if not out:
        raise InputError(f"no parameters of a {source} checkpoint found")
    if source == "fcos":
        # maskrcnn-benchmark's FrozenBatchNorm2d scales by running_var.rsqrt() (no eps);
        # Detectron2's by (running_var + eps).rsqrt(): store running_var - eps so that both
        # compute the same scale.
        for name, value in out.items():
            if name.startswith("backbone.bottom_up.") and name.endswith(".norm.running_var"):
                out[name] = value - FROZEN_BN_EPS
    if "head.cls_logits.weight" in out:
        rows = out["head.cls_logits.weight"].shape[0]
        if source == "torchvision" and (coco_80 if coco_80 is not None else rows == 91):
            if rows != 91:
                raise InputError(f"--coco-80 needs torchvision's 91 COCO outputs, found {rows}")
            index = torch.tensor(_coco80_rows())
            for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
                out[name] = out[name][index].clone()
            rows = 80
        if num_classes is not None and rows != num_classes:
            raise InputError(
                f"the checkpoint predicts {rows} classes, but {num_classes} were asked for "
                f"(MODEL.FCOS.NUM_CLASSES / --num-classes)"
            )
    return ConversionResult(out, source, dropped)


def convert_checkpoint(
    in_path: str,
    out_path: str,
    source: str,
    *,
    num_classes: Optional[int] = None,
    coco_80: Optional[bool] = None,
    allow_pickle: bool = False,
) -> ConversionResult:
    """Read ``in_path``, convert it and write a Detectron2 checkpoint ``{"model": ...}``."""
    result = convert_state_dict(
        load_state_dict(in_path, allow_pickle), source, num_classes=num_classes, coco_80=coco_80
    )
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    tmp = out_path + ".tmp"
    torch.save({"model": result.state_dict, "__author__": f"fcos_d2.convert from {source}"}, tmp)
    os.replace(tmp, out_path)
    return result


def report(result: ConversionResult) -> Sequence[str]:
    """Lines describing a conversion (for the command-line tool)."""
    lines = [f"converted {len(result.state_dict)} tensors from {result.source}"]
    if result.dropped:
        lines.append(f"dropped {len(result.dropped)} key(s) without an fcos-d2 counterpart:")
        lines.extend(f"  {k}" for k in result.dropped)
    return lines
