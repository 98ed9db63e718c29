"""
Test-time augmentation for FCOS, with Detectron2's conventions.

``TEST.AUG.MIN_SIZES`` / ``MAX_SIZE`` / ``FLIP`` choose the augmented copies of each image
(Detectron2's :class:`DatasetMapperTTA`: every size, each also flipped); :class:`FCOSWithTTA`
runs them through an FCOS model, maps their boxes back to the image with the inverse of
each copy's transforms and merges the union (class-aware NMS, optionally box voting), as
the original FCOS does. Detectron2's ``GeneralizedRCNNWithTTA`` does the same for R-CNN
models only.
"""

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.detection_utils import read_image
from detectron2.layers import batched_nms
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances, pairwise_iou
from fvcore.transforms import Transform
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..config import check_choice

__all__ = ["TTA_MERGE", "FCOSWithTTA", "boxes_to_original", "merge_detections"]

#: Merging of the augmented copies' detections (MODEL.FCOS.TTA_MERGE).
TTA_MERGE = ("nms", "voting")


def boxes_to_original(boxes: Tensor, transform: Transform) -> Tensor:
    """
    (K, 4) XYXY boxes in an augmented copy -> (K, 4) boxes in the original image, by the
    inverse of the copy's ``transform`` (e.g. resize, then horizontal flip), as Detectron2's
    ``GeneralizedRCNNWithTTA`` maps them (``Transform.apply_box`` on numpy).
    """
    mapped = transform.inverse().apply_box(boxes.detach().cpu().numpy().astype(np.float64))
    return torch.as_tensor(np.asarray(mapped), dtype=boxes.dtype, device=boxes.device)


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    image_size: Tuple[int, int],
    *,
    nms_thresh: float,
    max_detections: int,
    method: str = "nms",
    voting_iou: float = 0.8,
    nms_plus_one: bool = False,
) -> Instances:
    """
    Merge detections of several augmented copies, all in the original image's coordinates.

    Args:
        boxes: (K, 4) XYXY; scores: (K,); classes: (K,) int64.
        image_size: (h, w) of the original image; merged boxes are clipped to it.
        nms_thresh: IoU threshold of the class-aware NMS.
        max_detections: detections kept, highest scores first.
        method: "nms", or "voting": after the NMS each kept box is replaced by the
            score-weighted mean of all boxes of its class with IoU >= ``voting_iou`` with
            it (itself included); its score is kept.
        nms_plus_one: NMS with the legacy IoU (widths x1 - x0 + 1), as the model's NMS.

    Returns:
        Instances of ``image_size`` with pred_boxes, scores, pred_classes, in decreasing
        score order.
    """
    check_choice("TTA_MERGE", method, TTA_MERGE)
    nms_boxes = boxes + boxes.new_tensor([0, 0, 1, 1]) if nms_plus_one else boxes
    keep = batched_nms(nms_boxes, scores, classes, nms_thresh)[:max_detections]
    kept_boxes = boxes[keep]
    if method == "voting" and len(keep):
        iou = pairwise_iou(Boxes(kept_boxes), Boxes(boxes))  # (K', K)
        voters = (iou >= voting_iou) & (classes[keep][:, None] == classes[None, :])
        weights = voters.to(scores.dtype) * scores[None, :]
        total = weights.sum(1, keepdim=True)
        voted = (weights @ boxes) / total.clamp(min=torch.finfo(total.dtype).tiny)
        kept_boxes = torch.where(total > 0, voted, kept_boxes)
    result = Instances(
        tuple(image_size),
        pred_boxes=Boxes(kept_boxes),
        scores=scores[keep],
        pred_classes=classes[keep],
    )
    result.pred_boxes.clip(tuple(image_size))
    return result


class FCOSWithTTA(nn.Module):
    """
    An FCOS model with test-time augmentation; called like the model
    (``list[dict] -> list[{"instances": Instances}]``, boxes in each input's "height" x
    "width"). The copies of one image that have the same size (a size and its flip) run
    through the backbone as one batch.
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        tta_mapper: Callable[[Dict], List[Dict]],
        merge: str = "nms",
        voting_iou: float = 0.8,
        batch_size: int = 2,
    ):
        """
        Args:
            model: an FCOS model (or a DistributedDataParallel around one).
            tta_mapper: dataset dict -> augmented dicts, each with its "transforms" from
                the input image (Detectron2's DatasetMapperTTA).
            merge, voting_iou: see :func:`merge_detections`. The NMS threshold, the legacy
                IoU and the number of detections are the model's own.
            batch_size: most copies per forward pass (copies of equal size only).
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not hasattr(model, "postprocessing"):
            raise TypeError(f"FCOSWithTTA needs an FCOS model, got {type(model).__name__}")
        check_choice("TTA_MERGE", merge, TTA_MERGE)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tta_mapper = tta_mapper
        self.merge = merge
        self.voting_iou = voting_iou
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, model: nn.Module, tta_mapper: Optional[Callable] = None):
        return {
            "model": model,
            "tta_mapper": tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg),
            "merge": cfg.MODEL.FCOS.TTA_MERGE,
            "voting_iou": cfg.MODEL.FCOS.TTA_VOTING_IOU,
        }

    def _read_image(self, dataset_dict: Dict) -> Dict:
        out = dict(dataset_dict)
        if "image" not in out:
            image = read_image(out.pop("file_name"), self.model.input_format)
            out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out.setdefault("height", int(out["image"].shape[1]))
        out.setdefault("width", int(out["image"].shape[2]))
        return out

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        return [self._inference_one_image(self._read_image(x)) for x in batched_inputs]

    def augmented_detections(self, augmented: List[Dict]) -> List[Instances]:
        """
        Detections of each augmented dict (a CHW "image"), in that copy's own coordinates,
        from the model's usual inference; copies of equal size share forward passes.
        """
        by_size = defaultdict(list)
        for i, d in enumerate(augmented):
            by_size[tuple(d["image"].shape[-2:])].append(i)
        outputs: List[Optional[Instances]] = [None] * len(augmented)
        for (h, w), indices in by_size.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                inputs = [{"image": augmented[i]["image"], "height": h, "width": w} for i in chunk]
                for i, out in zip(chunk, self.model(inputs)):
                    outputs[i] = out["instances"]
        return outputs

    def _inference_one_image(self, dataset_dict: Dict) -> Dict[str, Instances]:
        orig_size = (int(dataset_dict["height"]), int(dataset_dict["width"]))
        augmented = self.tta_mapper(dataset_dict)
        transforms = [d.pop("transforms") for d in augmented]
        detections = self.augmented_detections(augmented)
        boxes = torch.cat(
            [boxes_to_original(d.pred_boxes.tensor, t) for d, t in zip(detections, transforms)]
        )
        p = self.model.postprocessing
        merged = merge_detections(
            boxes,
            torch.cat([d.scores for d in detections]),
            torch.cat([d.pred_classes for d in detections]),
            orig_size,
            nms_thresh=p.nms_thresh,
            max_detections=p.max_detections,
            method=self.merge,
            voting_iou=self.voting_iou,
            nms_plus_one=p.nms_plus_one,
        )
        return {"instances": merged}
