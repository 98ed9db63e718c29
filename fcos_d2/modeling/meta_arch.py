"""The FCOS meta-architecture: wires backbone, head, assigner, losses and inference."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from ..config import check_choice, complete_fcos_config
from ..postprocess import PostProcessing
from ..registry import LEGACY_BACKBONE_NAME, META_ARCH_NAME, register_as, upgrade_legacy_names
from .assigner import build_fcos_assigner
from .head import build_fcos_head
from .inference import fcos_inference
from .locations import compute_locations
from .losses import IOU_LOSS_SMOOTH, fcos_losses
from .precision import precision_dtype, resolve_precision

__all__ = ["FCOS", "cat_levels"]


def cat_levels(per_level: List[Tensor]) -> Tensor:
    """Per-level (N, K, H_i, W_i) maps -> (N, sum_i H_i * W_i, K), row-major within a level."""
    n, k = per_level[0].shape[:2]
    return torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, k) for x in per_level], dim=1)


@register_as(META_ARCH_REGISTRY, META_ARCH_NAME)
class FCOS(DenseDetector):
    """
    FCOS (Tian et al., ICCV 2019), registered as ``"fcos_d2.FCOS"``
    (``cfg.MODEL.META_ARCHITECTURE``). Training returns ``loss_fcos_cls``, ``loss_fcos_loc`` and
    ``loss_fcos_ctr``; inference returns per image ``{"instances": Instances}`` rescaled to
    the input's "height" x "width", as Detectron2's other detectors.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        assigner,
        head_in_features: Sequence[str],
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        postprocessing: Optional[PostProcessing] = None,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loc_loss_type: str = "iou",
        loc_loss_weight_by_centerness: bool = False,
        iou_loss_smooth: str = "",
        loss_weights: Optional[Dict[str, float]] = None,
        channels_last: bool = False,
        inference_precision: str = "",
        train_precision: str = "",
        compile: bool = False,
    ):
        """
        Args:
            backbone: returns the ``head_in_features`` maps.
            head: maps those features to (logits, box distances, centerness), see FCOSHead.
            assigner: callable(locations, strides, gt_instances) -> FCOSTargets.
            postprocessing: locations and inference settings (the backbone's strides are
                filled in); defaults of :class:`~fcos_d2.postprocess.PostProcessing` if None.
            inference_precision, train_precision: resolved precision names ("", "bf16",
                "fp16"; see precision.resolve_precision).
            compile: run backbone and head through ``torch.compile`` (``nn.Module.compile``:
                parameters, state dict and checkpoints stay those of the eager model).
            Other arguments: see ``fcos_d2/config.py`` for their meaning.
        """
        super().__init__(
            backbone, head, list(head_in_features), pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.assigner = assigner
        self.num_classes = num_classes
        self.input_format = input_format
        shapes = backbone.output_shape()
        self.strides = [int(shapes[f].stride) for f in self.head_in_features]
        self.postprocessing = (postprocessing or PostProcessing()).replace(
            strides=tuple(self.strides)
        )
        check_choice("IOU_LOSS_SMOOTH", iou_loss_smooth, IOU_LOSS_SMOOTH)
        self.iou_loss_smooth = iou_loss_smooth
        self.loss_kwargs = dict(
            num_classes=num_classes,
            focal_alpha=focal_loss_alpha,
            focal_gamma=focal_loss_gamma,
            loc_loss_type=loc_loss_type,
            loc_weight_by_centerness=loc_loss_weight_by_centerness,
            loss_weights=loss_weights,
        )
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.inference_precision = inference_precision
        self.train_precision = train_precision
        precision_dtype(inference_precision, "cuda")  # validate the names early
        precision_dtype(train_precision, "cuda", "SOLVER.AMP.CPU_PRECISION")
        if compile:
            self.backbone.compile()
            self.head.compile()

    @property
    def location_offset(self) -> float:
        return self.postprocessing.location_offset

    @property
    def location_stride(self) -> str:
        return self.postprocessing.location_stride

    def fuse(self) -> "FCOS":
        """
        Fuse the norms into the convolutions for inference (fusion.py): every fusable module
        (FrozenBNConv2d, the head with BatchNorm) stores its folded weights. Done by every
        inference forward; undone by ``train()`` and by loading a state dict, or by
        :meth:`unfuse` (needed after changing weights in place in eval mode).
        """
        for m in self.modules():
            if m is not self and hasattr(m, "fuse") and hasattr(m, "unfuse"):
                m.fuse()  # idempotent: nothing to do where fused already
        return self

    def unfuse(self) -> "FCOS":
        """Drop what :meth:`fuse` stored."""
        for m in self.modules():
            if m is not self and hasattr(m, "unfuse"):
                m.unfuse()
        return self

    @classmethod
    def from_config(cls, cfg):
        cfg = complete_fcos_config(cfg)  # e.g. a yaml merged without add_fcos_config
        if cfg.MODEL.BACKBONE.NAME == LEGACY_BACKBONE_NAME:
            cfg = cfg.clone()
            cfg.defrost()
            upgrade_legacy_names(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in cfg.MODEL.FCOS.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {missing} are not backbone outputs {sorted(shapes)}"
            )
        head = build_fcos_head(cfg, [shapes[f] for f in cfg.MODEL.FCOS.IN_FEATURES])
        f = cfg.MODEL.FCOS
        device = torch.device(cfg.MODEL.DEVICE)
        return {
            "backbone": backbone,
            "head": head,
            "assigner": build_fcos_assigner(cfg),
            "head_in_features": f.IN_FEATURES,
            "num_classes": f.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "postprocessing": PostProcessing.from_config(cfg, ()),
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "loc_loss_type": f.LOC_LOSS_TYPE,
            "loc_loss_weight_by_centerness": f.LOC_LOSS_WEIGHT_BY_CENTERNESS,
            "iou_loss_smooth": f.IOU_LOSS_SMOOTH,
            "loss_weights": {
                "loss_fcos_cls": f.LOSS_WEIGHT_CLS,
                "loss_fcos_loc": f.LOSS_WEIGHT_LOC,
                "loss_fcos_ctr": f.LOSS_WEIGHT_CTR,
            },
            "channels_last": f.CHANNELS_LAST,
            "inference_precision": resolve_precision(
                f.INFERENCE_PRECISION, device, "MODEL.FCOS.INFERENCE_PRECISION"
            ),
            "compile": f.COMPILE,
            # On GPUs Detectron2's AMPTrainer autocasts; on the CPU the model does.
            "train_precision": resolve_precision(
                cfg.SOLVER.AMP.CPU_PRECISION, device, "SOLVER.AMP.CPU_PRECISION"
            )
            if cfg.SOLVER.AMP.ENABLED and device.type == "cpu"
            else "",
        }

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        See :class:`DenseDetector`. Inference runs in ``inference_precision`` with the norms
        fused (:meth:`fuse`), training in ``train_precision`` (autocast; losses are
        computed in fp32).
        """
        if not self.training:
            self.fuse()
        precision = self.train_precision if self.training else self.inference_precision
        dtype = precision_dtype(precision, self.device)
        if dtype is None:
            return super().forward(batched_inputs)
        with torch.autocast(self.device.type, dtype=dtype):
            return super().forward(batched_inputs)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def locations(self, features: List[Tensor], padded_size: Tuple[int, int]) -> List[Tensor]:
        """
        Per level (H_i * W_i, 2) image coordinates of the locations of ``features``, computed
        from a batch padded to ``padded_size`` (h, w).
        """
        shapes = [tuple(x.shape[-2:]) for x in features]
        p = self.postprocessing
        return compute_locations(
            shapes,
            self.strides,
            p.location_offset,
            features[0].device,
            mode=p.location_stride,
            padded_size=padded_size,
        )

    def iou_smoothing(self, locations: List[Tensor]) -> Union[float, Tensor]:
        """The IoU loss's smoothing term in pixels^2: a float, or (L,) per location."""
        if self.iou_loss_smooth == "pixel":
            return 1.0
        if self.iou_loss_smooth == "stride":
            return torch.cat(
                [loc.new_full((len(loc),), float(s * s)) for loc, s in zip(locations, self.strides)]
            )
        return 0.0

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        logits, box_reg, centerness = predictions
        locations = self.locations(features, images.tensor.shape[-2:])
        targets = self.assigner(locations, self.strides, gt_instances)
        losses = fcos_losses(
            cat_levels(logits),
            cat_levels(box_reg),
            cat_levels(centerness).squeeze(2),
            targets.labels,
            targets.reg_targets,
            iou_smooth=self.iou_smoothing(locations),
            **self.loss_kwargs,
        )
        return losses

    def forward_inference(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]],
    ) -> List[Instances]:
        logits, box_reg, centerness = predictions
        locations = self.locations(features, images.tensor.shape[-2:])
        return fcos_inference(
            cat_levels(logits),
            cat_levels(box_reg),
            cat_levels(centerness).squeeze(2),
            torch.cat(locations),
            [len(x) for x in locations],
            images.image_sizes,
            self.postprocessing,
        )
