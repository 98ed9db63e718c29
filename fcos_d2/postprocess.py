"""
The one description of FCOS's post-processing, shared by every runtime.

:class:`PostProcessing` holds everything that turns the network's per-level outputs into
detections: where the locations sit, which candidates are kept, the NMS, and how many
detections remain. It is built from a config (:meth:`PostProcessing.from_config`) by the
meta-architecture, carried by test-time augmentation and the exporter, written to an exported
model's JSON (:meth:`PostProcessing.to_dict`) and read back by the torch-free runtime
(:meth:`PostProcessing.from_dict`). :func:`to_original_size` is Detectron2's
``detector_postprocess`` for boxes, for numpy arrays and torch tensors alike.

This module needs neither torch nor Detectron2 (fcos_d2.deploy imports it on machines
without them).
"""

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, Tuple

__all__ = ["CLIP_BOXES", "LOCATION_STRIDES", "PostProcessing", "to_original_size"]

#: Where boxes are clipped before NMS (MODEL.FCOS.CLIP_BOXES_TEST): "image" ([0, w] x [0, h]),
#: "image_minus_one" ([0, w - 1] x [0, h - 1], maskrcnn-benchmark) or "" (not before NMS).
CLIP_BOXES = ("image", "image_minus_one", "")
#: Where the locations of a level sit (MODEL.FCOS.LOCATION_STRIDE): "level" (the level's
#: stride, paper) or "padded_size_div_grid" (per axis, padded image size // grid size, as
#: torchvision's AnchorGenerator places them).
LOCATION_STRIDES = ("level", "padded_size_div_grid")


def _check(key: str, value: Any, choices: Tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"MODEL.FCOS.{key} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class PostProcessing:
    """
    FCOS inference settings (the config keys of fcos_d2/config.py that they come from):

    - strides: stride of each head level (the backbone's), for the locations;
    - location_offset, location_stride: LOCATION_OFFSET, LOCATION_STRIDE;
    - score_thresh (SCORE_THRESH_TEST), thresh_with_centerness (THRESH_WITH_CENTERNESS),
      sqrt_score (SQRT_SCORE): which (location, class) pairs are candidates, and their score;
    - topk_candidates (TOPK_CANDIDATES_TEST): candidates kept per level;
    - clip (CLIP_BOXES_TEST): clipping of the decoded boxes before NMS;
    - nms_thresh (NMS_THRESH_TEST), nms_plus_one (NMS_LEGACY_PLUS_ONE): the class-aware NMS;
    - max_detections (TEST.DETECTIONS_PER_IMAGE): detections kept per image.
    """

    strides: Tuple[int, ...] = field(default=())
    location_offset: float = 0.5
    location_stride: str = "level"
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.6
    max_detections: int = 100
    thresh_with_centerness: bool = False
    sqrt_score: bool = False
    clip: str = "image"
    nms_plus_one: bool = False

    def __post_init__(self) -> None:
        _check("LOCATION_STRIDE", self.location_stride, LOCATION_STRIDES)
        _check("CLIP_BOXES_TEST", self.clip, CLIP_BOXES)
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.topk_candidates < 1 or self.max_detections < 1:
            raise ValueError(
                "MODEL.FCOS.TOPK_CANDIDATES_TEST and TEST.DETECTIONS_PER_IMAGE must be >= 1, "
                f"got {self.topk_candidates} and {self.max_detections}"
            )

    @classmethod
    def from_config(cls, cfg: Any, strides: Tuple[int, ...]) -> "PostProcessing":
        """The settings of a Detectron2 config (``cfg.MODEL.FCOS``, ``cfg.TEST``)."""
        f = cfg.MODEL.FCOS
        return cls(
            strides=tuple(strides),
            location_offset=float(f.LOCATION_OFFSET),
            location_stride=f.LOCATION_STRIDE,
            score_thresh=float(f.SCORE_THRESH_TEST),
            topk_candidates=int(f.TOPK_CANDIDATES_TEST),
            nms_thresh=float(f.NMS_THRESH_TEST),
            max_detections=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            thresh_with_centerness=bool(f.THRESH_WITH_CENTERNESS),
            sqrt_score=bool(f.SQRT_SCORE),
            clip=f.CLIP_BOXES_TEST,
            nms_plus_one=bool(f.NMS_LEGACY_PLUS_ONE),
        )

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (lists for tuples)."""
        out = asdict(self)
        out["strides"] = list(self.strides)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PostProcessing":
        """The inverse of :meth:`to_dict`; other keys are ignored (so the flat metadata of
        models exported by fcos-d2 0.1, which holds the same keys, reads too)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "PostProcessing":
        """A copy with some settings changed."""
        return replace(self, **changes)


def _namespace(x: Any):
    import numpy as np

    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def to_original_size(boxes: Any, resized_size: Any, original_size: Any) -> Tuple[Any, Any]:
    """
    Detectron2's ``detector_postprocess`` for boxes: (K, 4) XYXY boxes in an image resized to
    ``resized_size`` (h, w) are scaled to ``original_size`` (h, w), clipped to it, and those
    left empty (width or height 0) are marked. Works on numpy arrays and on torch tensors
    (sizes as tensors when tracing, so that the exported graph keeps them dynamic).

    Returns:
        boxes (K, 4) in the original image, and (K,) bool: the boxes that are not empty.
    """
    xp = _namespace(boxes)
    if xp.__name__ == "numpy":
        (h, w), (oh, ow) = resized_size, original_size
        scale = xp.asarray([ow / w, oh / h, ow / w, oh / h], dtype=boxes.dtype)
        limit = xp.asarray([ow, oh, ow, oh], dtype=boxes.dtype)
    else:
        size = xp.as_tensor(resized_size, dtype=boxes.dtype, device=boxes.device)
        original = xp.as_tensor(original_size, dtype=boxes.dtype, device=boxes.device)
        ratio = original / size
        scale = xp.stack((ratio[1], ratio[0], ratio[1], ratio[0]))
        limit = xp.stack((original[1], original[0], original[1], original[0]))
    boxes = xp.minimum((boxes * scale).clip(min=0), limit)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, nonempty
