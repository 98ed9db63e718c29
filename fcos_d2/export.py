"""
Export the FCOS detector to ONNX and to ``torch.export`` programs.

:class:`ExportableFCOS` is the whole detector as one module with static-shape
post-processing (the same :func:`~fcos_d2.modeling.inference.fcos_postprocess` as eager
inference):

    inputs:  image (3, H, W) float32, the config's channel order (INPUT.FORMAT) and 0-255
             range, already resized as the config's test resize does (any H, W);
             original_size (2,) int64 (height, width) of the image before resizing.
    outputs: boxes (D, 4) float32 (x0, y0, x1, y1) in original-image pixels,
             scores (D,) float32, classes (D,) int64, count () int64;
             the first ``count`` rows are the detections in decreasing score order (D =
             TEST.DETECTIONS_PER_IMAGE), the rest padding (score -1).

:class:`ExportableFCOSNetwork` is backbone + head only (``--network-only``): for each level
p3..p7 its class logits (C, H_i, W_i), box distances in pixels (4, H_i, W_i) and
centerness logits (1, H_i, W_i), for runtimes without NMS; :mod:`fcos_d2.deploy` holds the
same post-processing in numpy.

A JSON file beside each exported model (:func:`deploy_metadata`) records what a runtime
needs: the test resize, channel order, strides, the post-processing settings.
"""

import copy
import json
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import Tensor, nn
from torch.nn import functional as F

from .modeling.fusion import to_plain_convs
from .modeling.inference import fcos_postprocess
from .modeling.locations import compute_locations
from .modeling.meta_arch import FCOS, cat_levels
from .modeling.nms import (
    decompose_batched_nms_mask,
    onnx_batched_nms_mask,
    register_nms_fake_for_export,
)
from .postprocess import to_original_size

__all__ = [
    "EXPORT_FORMATS",
    "ExportableFCOS",
    "ExportableFCOSNetwork",
    "check_exportable",
    "deploy_metadata",
    "export_model",
    "metadata_path",
]

#: Formats of :func:`export_model` (and tools/export_model.py --format).
EXPORT_FORMATS = ("onnx", "torch_export")
ONNX_OPSET = 18
#: Sides an exported model accepts: at least 129 px, so that every level down to P7 (stride
#: 128, after padding to 32) has 2 or more rows and columns, which the exported graph assumes.
MIN_SIDE, MAX_SIDE = 129, 4096


class ExportableFCOSNetwork(nn.Module):
    """Normalisation, padding, backbone and head of an FCOS model, in fp32 with folded norms."""

    def __init__(self, model: FCOS):
        super().__init__()
        model = copy.deepcopy(model).float().eval()
        # Contiguous (NCHW) weights: the exported graph's layout is the runtime's choice.
        model.to(memory_format=torch.contiguous_format)
        to_plain_convs(model.backbone)  # FrozenBatchNorm folded into plain convolutions
        model.fuse()  # the head's BatchNorm (FCOS-RT) likewise
        self.backbone = model.backbone
        self.head = model.head
        self.requires_grad_(False)  # the exported programs return plain (no-grad) tensors
        self.in_features = list(model.head_in_features)
        self.register_buffer("pixel_mean", model.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.clone(), persistent=False)
        self.size_divisibility = int(model.backbone.size_divisibility)

    def predictions(self, image: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """(3, H, W) image -> per level (1, C, H_i, W_i), (1, 4, H_i, W_i), (1, 1, H_i, W_i)."""
        x = (image - self.pixel_mean) / self.pixel_std
        if self.size_divisibility > 1:  # pad bottom/right with 0 after normalising, as D2
            d = self.size_divisibility
            # Written as a multiple of d, which lets torch.export see that every level's
            # size is exactly half the previous one's.
            pad_h = (image.shape[1] + d - 1) // d * d - image.shape[1]
            pad_w = (image.shape[2] + d - 1) // d * d - image.shape[2]
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.backbone(x[None])
        return self.head([features[f] for f in self.in_features])

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        logits, box_reg, centerness = self.predictions(image)
        out: List[Tensor] = []
        for triple in zip(logits, box_reg, centerness):
            out.extend(t[0] for t in triple)
        return tuple(out)

    @staticmethod
    def output_names(num_levels: int) -> List[str]:
        return [
            f"{kind}_{level}"
            for level in range(num_levels)
            for kind in ("logits", "box_reg", "centerness")
        ]


class ExportableFCOS(nn.Module):
    """The whole detector: :class:`ExportableFCOSNetwork` + locations + post-processing +
    Detectron2's ``detector_postprocess`` (rescale, clip, drop empty boxes)."""

    def __init__(self, model: FCOS):
        super().__init__()
        self.network = ExportableFCOSNetwork(model)
        self.postprocessing = model.postprocessing

    def forward(
        self, image: Tensor, original_size: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        logits, box_reg, centerness = self.network.predictions(image)
        p = self.postprocessing
        height, width = image.shape[1], image.shape[2]
        shapes = [tuple(x.shape[-2:]) for x in logits]
        padded = (logits[0].shape[-2] * p.strides[0], logits[0].shape[-1] * p.strides[0])
        locations = compute_locations(
            shapes,
            p.strides,
            p.location_offset,
            image.device,
            mode=p.location_stride,
            padded_size=padded,
        )
        size = torch.stack((image.new_ones(()) * height, image.new_ones(()) * width))
        det = fcos_postprocess(
            cat_levels(logits),
            cat_levels(box_reg),
            cat_levels(centerness).squeeze(2),
            torch.cat(locations),
            [h * w for h, w in shapes],
            size[None],
            p,
        )
        boxes, scores, classes, valid = (t[0] for t in det)
        boxes, nonempty = to_original_size(boxes, size, original_size.to(boxes.dtype))
        valid = valid & nonempty
        # Valid rows first, in their (decreasing score) order: distinct keys, one top-k.
        d = valid.shape[0]
        rank = torch.arange(d, 0, -1, device=valid.device, dtype=torch.float32)
        order = (valid.to(torch.float32) * d + rank).topk(d).indices
        boxes, scores, classes, valid = boxes[order], scores[order], classes[order], valid[order]
        scores = torch.where(valid, scores, -1.0)
        return boxes, scores, classes, valid.sum()


def check_exportable(cfg: CfgNode, fmt: str = "onnx") -> None:
    """Raise ValueError naming the config key if the config cannot be exported as ``fmt``."""
    f = cfg.MODEL.FCOS
    deformable = any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) or f.get("USE_DEFORMABLE", False)
    if fmt == "onnx" and deformable:
        raise ValueError(
            "deformable convolution (MODEL.RESNETS.DEFORM_ON_PER_STAGE / "
            "MODEL.FCOS.USE_DEFORMABLE) has no ONNX export here; use --format torch_export"
        )
    if f.INFERENCE_PRECISION not in ("", "fp32", "float32", "auto"):
        raise ValueError(
            f"MODEL.FCOS.INFERENCE_PRECISION {f.INFERENCE_PRECISION!r}: export writes fp32 "
            "models; choose the runtime's precision instead (e.g. OpenVINO bf16)"
        )
    if f.COMPILE:
        raise ValueError("MODEL.FCOS.COMPILE True: export the eager model (COMPILE False)")
    if cfg.MODEL.META_ARCHITECTURE != "fcos_d2.FCOS":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}: only fcos_d2.FCOS exports"
        )


def deploy_metadata(cfg: CfgNode, model: FCOS, network_only: bool) -> Dict[str, Any]:
    """What a runtime needs besides the model file (see fcos_d2/deploy.py): the input's
    resize and channel order, and the post-processing (:class:`PostProcessing`)."""
    return {
        "format_version": 2,
        "network_only": network_only,
        "min_side": MIN_SIDE,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "num_classes": int(model.num_classes),
        "size_divisibility": int(model.backbone.size_divisibility),
        # The value ExportedPredictor pads small inputs with (normalised to 0, as D2 pads).
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "postprocessing": model.postprocessing.to_dict(),
    }


def metadata_path(model_path: str) -> str:
    """The metadata JSON written beside an exported model: ``model.onnx`` -> ``model.json``."""
    return os.path.splitext(model_path)[0] + ".json"


def _sample_inputs(height: int, width: int) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=g) * 255
    return image, torch.tensor([height, width], dtype=torch.int64)


def export_model(
    model: FCOS,
    cfg: CfgNode,
    output: str,
    fmt: str,
    *,
    network_only: bool = False,
    sample_size: Sequence[int] = (320, 416),
) -> str:
    """
    Export ``model`` (weights loaded) as ``fmt`` into the folder ``output`` and return the
    model file's path: ``model.onnx`` / ``model_network.onnx`` (ONNX opset 18) or
    ``model.pt2`` (``torch.export``; loads with ``torch.export.load`` in a process that
    imports torch and torchvision only). Height and width are dynamic; ``sample_size`` is
    the size traced with.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if network_only and fmt != "onnx":
        raise ValueError("--network-only exports ONNX only")
    check_exportable(cfg, fmt)
    register_nms_fake_for_export()
    os.makedirs(output, exist_ok=True)
    image, original = _sample_inputs(*sample_size)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    module = ExportableFCOSNetwork(model) if network_only else ExportableFCOS(model)
    module.eval()
    if network_only:
        args: Tuple[Tensor, ...] = (image,)
        dynamic: Any = ({1: height, 2: width},)
    else:
        args = (image, original)
        dynamic = ({1: height, 2: width}, None)
    with torch.no_grad():
        if fmt == "onnx":
            name = "model_network.onnx" if network_only else "model.onnx"
            path = os.path.join(output, name)
            num_levels = len(model.strides)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=ONNX_OPSET,
                dynamic_shapes=dynamic,
                input_names=["image"] if network_only else ["image", "original_size"],
                output_names=ExportableFCOSNetwork.output_names(num_levels)
                if network_only
                else ["boxes", "scores", "classes", "count"],
                custom_translation_table={
                    torch.ops.fcos_d2.batched_nms_mask.default: onnx_batched_nms_mask
                },
                verbose=False,
            )
            program.save(path)
        else:
            path = os.path.join(output, "model.pt2")
            program = torch.export.export(module, args, dynamic_shapes=dynamic)
            # No fcos_d2 operator in the saved program: NMS becomes torchvision's.
            program = program.run_decompositions(
                {torch.ops.fcos_d2.batched_nms_mask.default: decompose_batched_nms_mask}
            )
            torch.export.save(program, path)
    with open(metadata_path(path), "w") as f:
        json.dump(deploy_metadata(cfg, model, network_only), f, indent=2)
    return path


# ---------------------------------------------------------------- parity with eager

PARITY_BOX_TOL = 1e-2  # px
PARITY_SCORE_TOL = 1e-4

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4), scores (K,), classes (K,)


def exported_runners(path: str, num_threads: int | None = None) -> Dict[str, Callable]:
    """
    Callables ``(image (3, h, w) float32 tensor, (height, width) original) -> Detections``
    of an exported model: ``.onnx`` in ONNX Runtime and OpenVINO (f32), ``.pt2`` as its
    ExportedProgram.
    """
    if path.endswith(".pt2"):
        program = torch.export.load(path).module()

        def run_pt2(image: Tensor, original: Tuple[int, int]) -> Detections:
            with torch.no_grad():
                boxes, scores, classes, count = program(image, torch.tensor(original))
            n = int(count)
            return boxes[:n].numpy(), scores[:n].numpy(), classes[:n].numpy()

        return {"torch_export": run_pt2}
    from .deploy import ExportedPredictor

    def wrap(predictor: ExportedPredictor) -> Callable:
        def run(image: Tensor, original: Tuple[int, int]) -> Detections:
            out = predictor.run_resized(image.numpy(), original)
            return out["boxes"], out["scores"], out["classes"]

        return run

    return {
        f"{runtime}_f32": wrap(ExportedPredictor(path, runtime, "f32", num_threads=num_threads))
        for runtime in ("onnxruntime", "openvino")
    }


def _matched_differences(got: Detections, want: Detections) -> Tuple[float, float]:
    """
    The largest box (px) and score differences between two sets of detections, each
    detection compared with the closest one of its class in the other set among those of
    a score within PARITY_SCORE_TOL (both ways): two detections whose scores differ by
    float rounding may come out in either order.
    """
    (b1, s1, c1), (b2, s2, c2) = got, want
    score_diff = float(np.abs(np.sort(s1) - np.sort(s2)).max())
    same = (c1[:, None] == c2[None, :]) & (np.abs(s1[:, None] - s2[None, :]) <= PARITY_SCORE_TOL)
    dist = np.abs(b1[:, None, :] - b2[None, :, :]).max(axis=2)
    dist = np.where(same, dist, np.inf)
    return float(max(dist.min(axis=1).max(), dist.min(axis=0).max())), score_diff


def compare_with_eager(
    model: FCOS,
    path: str,
    inputs: Sequence[Tuple[Tensor, Tuple[int, int]]],
    num_threads: int | None = None,
) -> Dict[str, Dict[str, float]]:
    """
    Detections of the exported model at ``path`` (see :func:`exported_runners`) against
    eager ``model`` (fp32, eval mode) on ``inputs``: (image (3, h, w) float32 as the
    exported model takes it, (height, width) of the original image). Per runtime: images,
    detections (eager's; in all, most and fewest per image), images whose count or classes
    differ, and over the others the largest box difference (px) and score difference;
    ``agree`` (within PARITY_BOX_TOL / PARITY_SCORE_TOL, no count or class difference).
    """
    eager: List[Detections] = []
    with torch.no_grad():
        for image, (h, w) in inputs:
            inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
            eager.append(
                (inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy())
            )
    report: Dict[str, Dict[str, float]] = {}
    for name, run in exported_runners(path, num_threads).items():
        row = {
            "images": len(inputs),
            "detections": sum(len(e[1]) for e in eager),
            "most_per_image": max((len(e[1]) for e in eager), default=0),
            "fewest_per_image": min((len(e[1]) for e in eager), default=0),
            "count_differs": 0,
            "classes_differ": 0,
            "max_box_diff": 0.0,
            "max_score_diff": 0.0,
        }
        for (image, original), (e_boxes, e_scores, e_classes) in zip(inputs, eager):
            boxes, scores, classes = (np.asarray(x) for x in run(image, original))
            if len(scores) != len(e_scores):
                row["count_differs"] += 1
            elif np.sort(classes).tolist() != np.sort(e_classes).tolist():
                row["classes_differ"] += 1
            elif len(scores):
                box_diff, score_diff = _matched_differences(
                    (boxes, scores, classes), (e_boxes, e_scores, e_classes)
                )
                row["max_box_diff"] = max(row["max_box_diff"], box_diff)
                row["max_score_diff"] = max(row["max_score_diff"], score_diff)
        row["agree"] = (
            row["count_differs"] == 0
            and row["classes_differ"] == 0
            and row["max_box_diff"] <= PARITY_BOX_TOL
            and row["max_score_diff"] <= PARITY_SCORE_TOL
        )
        report[name] = row
    return report


# ---------------------------------------------------------------- INT8 models


def compare_counts(
    int8: Any, fp32: Any, inputs: Sequence[Tuple[Tensor, Tuple[int, int]]], tolerance: float = 0.05
) -> Dict[str, Any]:
    """
    Detection counts of an INT8 model against its fp32 model (two
    :class:`~fcos_d2.deploy.ExportedPredictor`) on ``inputs`` (as :func:`compare_with_eager`
    takes them): per image, the counts of both and whether they are within ``tolerance``
    (a fraction of fp32's count, at least one detection: an image with 10 detections may
    differ by 1). ``agree`` when every image is.
    """
    rows = []
    for image, original in inputs:
        x = image.numpy()
        n8 = len(int8.run_resized(x, original)["scores"])
        n32 = len(fp32.run_resized(x, original)["scores"])
        rows.append((n8, n32, abs(n8 - n32) <= max(1.0, tolerance * n32)))
    return {
        "images": len(rows),
        "counts_int8": [r[0] for r in rows],
        "counts_fp32": [r[1] for r in rows],
        "within": sum(r[2] for r in rows),
        "largest_relative_difference": max(
            (abs(a - b) / max(b, 1) for a, b, _ in rows), default=0.0
        ),
        "agree": all(r[2] for r in rows),
    }


def exported_ap(predictor: Any, cfg: CfgNode, dataset: str, dicts: Sequence[Dict]) -> float:
    """COCO AP (points) of an :class:`~fcos_d2.deploy.ExportedPredictor` on the images of
    ``dicts`` (dataset dicts of ``dataset``), by the evaluator fcos-d2 uses for it."""
    import contextlib
    import tempfile

    import cv2
    from detectron2.structures import Boxes, Instances

    from .engine.evaluators import build_evaluator

    with tempfile.TemporaryDirectory(prefix="fcos_d2_ap_") as tmp:
        evaluator = build_evaluator(cfg, dataset, output_folder=tmp)
        evaluator.reset()
        for d in dicts:
            image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
            det = predictor(image)
            inst = Instances(
                image.shape[:2],
                pred_boxes=Boxes(torch.as_tensor(det["boxes"])),
                scores=torch.as_tensor(det["scores"]),
                pred_classes=torch.as_tensor(det["classes"]),
            )
            evaluator.process([d], [{"instances": inst}])
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            results = evaluator.evaluate()
    return float(results["bbox"]["AP"])
