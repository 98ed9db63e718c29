"""
Sliced inference of fcos-d2 models through SAHI (https://github.com/obss/sahi), the
ecosystem's sliced-inference library, for small objects in large images.

SAHI loads Detectron2 models itself (``sahi.models.detectron2``: ``get_cfg()``,
``set_new_allowed(True)``, ``merge_from_file``, ``DefaultPredictor``), so an fcos-d2 yaml and
checkpoint work with it as they are (the model builders complete the FCOS keys, see
:func:`fcos_d2.config.complete_fcos_config`). This module only supplies what SAHI needs from
a config that may differ from its yaml (command-line overrides, class names of a dataset
registered in another process) and converts its predictions back to Detectron2
``Instances``; the tiling, the per-tile inference and the merging are SAHI's.
"""

import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from .errors import InputError

__all__ = ["category_mapping", "sahi_detection_model", "sliced_predict"]


def category_mapping(cfg: CfgNode) -> Dict[str, str]:
    """SAHI's ``{"0": name, ...}`` for the model's classes: ``thing_classes`` of the first
    training (else test) dataset when registered with as many names as the model has classes,
    else ``"0", "1", ...``."""
    num = cfg.MODEL.FCOS.NUM_CLASSES
    names = None
    for name in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
        if name in MetadataCatalog.list():
            names = MetadataCatalog.get(name).get("thing_classes")
            if names:
                break
    if not names or len(names) != num:
        names = [str(i) for i in range(num)]
    return {str(i): str(n) for i, n in enumerate(names)}


def sahi_detection_model(cfg: CfgNode, confidence_threshold: float = 0.3) -> Any:
    """
    A ``sahi`` detection model (``AutoDetectionModel.from_pretrained(model_type="detectron2")``)
    of the model that ``cfg`` describes, weights from ``cfg.MODEL.WEIGHTS``. SAHI reads a
    config file: ``cfg`` (with its overrides) is written to a temporary yaml for it.
    """
    try:
        from sahi import AutoDetectionModel
    except ImportError as e:  # pragma: no cover - sahi is in the set-up
        raise ImportError(
            "sliced inference needs SAHI: pip install --no-deps sahi==0.12.8 shapely fire "
            "(bash tools/setup_env.sh installs it)"
        ) from e
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS not found: {weights}")
    with tempfile.TemporaryDirectory(prefix="fcos_d2_sahi_") as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        return AutoDetectionModel.from_pretrained(
            model_type="detectron2",
            model_path=weights,
            config_path=path,
            confidence_threshold=confidence_threshold,
            category_mapping=category_mapping(cfg),
            device=cfg.MODEL.DEVICE,
        )


def sliced_predict(
    model: Any,
    image_bgr: np.ndarray,
    slice_hw: Tuple[int, int],
    overlap: float = 0.2,
    *,
    full_image: bool = True,
    postprocess: Optional[Dict[str, Any]] = None,
) -> Instances:
    """
    Detections of ``model`` (from :func:`sahi_detection_model`) on a uint8 BGR image of shape
    (H, W, 3) by SAHI's ``get_sliced_prediction``: tiles of ``slice_hw`` = (height, width)
    overlapping by the ``overlap`` fraction, plus the whole image when ``full_image`` (SAHI's
    ``perform_standard_pred``), merged by SAHI's post-processing (its default: greedy NMM,
    intersection over smaller >= 0.5, per class; ``postprocess`` passes other
    ``postprocess_*`` arguments). Returns ``Instances`` with ``pred_boxes`` (N, 4) XYXY in
    image pixels, ``scores`` (N,) and ``pred_classes`` (N,) for drawing and evaluation as
    Detectron2's predictors' output.
    """
    from sahi.predict import get_sliced_prediction

    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise InputError(
            f"sliced_predict needs a uint8 BGR image (H, W, 3), got {image_bgr.dtype} "
            f"{tuple(image_bgr.shape)}"
        )
    height, width = slice_hw
    result = get_sliced_prediction(
        np.ascontiguousarray(image_bgr[:, :, ::-1]),  # SAHI passes RGB and flips for BGR
        model,
        slice_height=int(height),
        slice_width=int(width),
        overlap_height_ratio=float(overlap),
        overlap_width_ratio=float(overlap),
        perform_standard_pred=full_image,
        verbose=0,
        **{f"postprocess_{k}": v for k, v in (postprocess or {}).items()},
    )
    preds = result.object_prediction_list
    boxes = np.array([p.bbox.to_xyxy() for p in preds], dtype=np.float32).reshape(-1, 4)
    out = Instances(image_bgr.shape[:2])
    out.pred_boxes = Boxes(torch.from_numpy(boxes))
    out.scores = torch.tensor([p.score.value for p in preds], dtype=torch.float32)
    out.pred_classes = torch.tensor([p.category.id for p in preds], dtype=torch.int64)
    return out
