"""Predictors for applications: Detectron2's DefaultPredictor, hardened, and a batched one."""

import math
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from .engine.checkpoint import FCOSCheckpointer
from .errors import InputError
from .evaluation.class_thresholds import (
    ScoreThresholds,
    apply_score_thresholds,
    load_class_thresholds,
)
from .images import to_bgr_uint8
from .registry import upgrade_legacy_names

__all__ = ["BatchPredictor", "Predictor", "to_bgr_uint8"]


class Predictor(DefaultPredictor):
    """
    ``DefaultPredictor`` (same preprocessing and outputs) that also accepts grayscale,
    BGRA and 16-bit images (see :func:`to_bgr_uint8`) and refuses weights that do not fit
    the model (another number of classes, missing parameters) instead of running with
    random ones. With ``thresholds`` it returns only detections scored at or above them.
    """

    def __init__(self, cfg: CfgNode, thresholds: Optional[ScoreThresholds] = None):
        """
        Args:
            cfg: the model's config, with MODEL.WEIGHTS.
            thresholds: None (every detection, as DefaultPredictor), one score threshold
                for all classes, one per class (None: the class is never kept), or the
                path of a per-class JSON file written by tools/class_thresholds.py.
        """
        # Not DefaultPredictor.__init__: it loads weights non-strictly.
        self.cfg = cfg.clone()
        self.cfg.defrost()
        upgrade_legacy_names(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        self.score_thresholds = self._score_thresholds(thresholds)
        if not cfg.MODEL.WEIGHTS:
            raise InputError("Predictor needs trained weights: set MODEL.WEIGHTS")
        FCOSCheckpointer(self.model, strict=True).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise InputError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format}")

    def _score_thresholds(
        self, thresholds: Optional[ScoreThresholds]
    ) -> Union[None, float, torch.Tensor]:
        if thresholds is None or isinstance(thresholds, (int, float)):
            return thresholds
        num_classes = self.cfg.MODEL.FCOS.NUM_CLASSES
        if isinstance(thresholds, str):
            metadata = getattr(self, "metadata", None)
            names = metadata.get("thing_classes") if metadata is not None else None
            values = load_class_thresholds(thresholds, class_names=names)
            where = thresholds
        else:
            values = [math.inf if t is None else float(t) for t in thresholds]
            where = "thresholds"
        if len(values) != num_classes:
            raise InputError(
                f"{where}: {len(values)} class thresholds, but MODEL.FCOS.NUM_CLASSES is "
                f"{num_classes}"
            )
        return torch.tensor(values, dtype=torch.float32)

    def filter(self, output: Dict) -> Dict:
        """``{"instances": ...}`` with the detections below the score thresholds removed."""
        if self.score_thresholds is None:
            return output
        return {
            **output,
            "instances": apply_score_thresholds(output["instances"], self.score_thresholds),
        }

    def __call__(self, original_image: np.ndarray) -> Dict:
        """(H, W[, C]) BGR image -> ``{"instances": Instances}`` in its coordinates."""
        return self.filter(super().__call__(to_bgr_uint8(original_image)))

    def model_input(self, original_image: np.ndarray) -> Dict:
        """The dict the model takes for one BGR image (resized, in INPUT.FORMAT)."""
        image = to_bgr_uint8(original_image)
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}


class BatchPredictor(Predictor):
    """Runs several images per forward pass: ``predictor([img1, img2, ...])``."""

    def __init__(
        self, cfg: CfgNode, batch_size: int = 4, thresholds: Optional[ScoreThresholds] = None
    ):
        super().__init__(cfg, thresholds=thresholds)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def __call__(self, images: Iterable[np.ndarray]) -> List[Dict]:
        """List of BGR images -> list of ``{"instances": Instances}``, in input order."""
        images = list(images)
        outputs: List[Dict] = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = [self.model_input(im) for im in images[start : start + self.batch_size]]
                outputs.extend(self.filter(out) for out in self.model(batch))
        return outputs
