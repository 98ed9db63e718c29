"""
Run exported FCOS models (``tools/export_model.py``) with ONNX Runtime or OpenVINO, using
only numpy and the runtime: no torch, Detectron2 or fcos_d2 model code is imported
(``import fcos_d2`` skips those when torch is not installed).

    from fcos_d2.deploy import ExportedPredictor
    predictor = ExportedPredictor("exported/model.onnx", runtime="openvino", precision="bf16")
    out = predictor(bgr_uint8_image)   # {"boxes": (K, 4), "scores": (K,), "classes": (K,)}

Models exported with ``--network-only`` get the post-processing of
:func:`fcos_d2.modeling.inference.fcos_postprocess` here, in numpy (:func:`postprocess`),
with the settings the exporter wrote (:class:`fcos_d2.postprocess.PostProcessing`).
Images are converted as ``fcos_d2.predictor.Predictor`` converts them (:mod:`fcos_d2.images`)
and resized with Pillow, as Detectron2 resizes them.
"""

import json
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .images import to_bgr_uint8
from .postprocess import PostProcessing, to_original_size

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "ExportedPredictor",
    "compute_locations",
    "load_metadata",
    "nms_per_class",
    "postprocess",
    "resize_shortest_edge",
]

#: Runtimes of :class:`ExportedPredictor`.
RUNTIMES = ("onnxruntime", "openvino")
#: Precisions of :class:`ExportedPredictor` ("int8": models of tools/export_model.py
#: --quantize int8, see fcos_d2/quantize.py).
PRECISIONS = ("f32", "bf16", "auto", "int8")


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA`` values) under which its kernels, and OpenVINO's CPU
#: plugin built on it, do not use the CPU's bf16 instructions even where the CPU has them.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def onednn_isa_cap() -> str:
    """oneDNN's ISA cap from the environment (ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA), ""."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))


def onednn_allows_bf16() -> bool:
    """False where oneDNN's ISA cap keeps its kernels off the CPU's bf16 instructions."""
    return onednn_isa_cap().upper() not in ONEDNN_ISAS_WITHOUT_BF16


def load_metadata(model_path: str) -> Dict[str, Any]:
    """The JSON that tools/export_model.py writes beside a model (``model.onnx`` ->
    ``model.json``)."""
    path = os.path.splitext(model_path)[0] + ".json"
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: it is written beside the model by tools/export_model.py"
        )
    with open(path) as f:
        return json.load(f)


def resize_shortest_edge(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """
    (H, W, 3) uint8 -> resized so that the shorter side is ``min_size`` and the longer at
    most ``max_size``: Detectron2's ResizeShortestEdge at test time (its output size,
    rounded to nearest) with Pillow's bilinear filter, which Detectron2's ResizeTransform
    uses for uint8 images, so the pixels equal ``DefaultPredictor``'s.
    """
    h, w = image.shape[:2]
    scale = min_size / min(h, w)
    new_h, new_w = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    if (new_h, new_w) == (h, w):
        return image
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


def compute_locations(shapes: Sequence[Tuple[int, int]], p: PostProcessing) -> List[np.ndarray]:
    """Per level (H_i * W_i, 2) (x, y) locations, as fcos_d2.modeling.locations places them."""
    strides = p.strides
    if p.location_stride == "padded_size_div_grid":
        ph, pw = shapes[0][0] * strides[0], shapes[0][1] * strides[0]
        steps = [(ph // h, pw // w) for h, w in shapes]
    else:
        steps = [(s, s) for s in strides]
    out = []
    for (h, w), (sy, sx) in zip(shapes, steps):
        xs = np.arange(w, dtype=np.float32) * sx + np.floor(sx * p.location_offset)
        ys = np.arange(h, dtype=np.float32) * sy + np.floor(sy * p.location_offset)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        out.append(np.stack((xx.reshape(-1), yy.reshape(-1)), axis=1))
    return out


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms_per_class(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """
    Greedy class-aware NMS: (K, 4), (K,), (K,) -> indices kept, by decreasing score. A box
    is suppressed by a kept higher-scoring box of its class with IoU above the threshold.
    """
    keep: List[int] = []
    for c in np.unique(classes):
        idx = np.nonzero(classes == c)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        while len(idx):
            keep.append(int(idx[0]))
            if len(idx) == 1:
                break
            idx = idx[1:][_iou_one_to_many(boxes[idx[0]], boxes[idx[1:]]) <= iou_threshold]
    keep_arr = np.array(keep, dtype=np.int64)
    return keep_arr[np.argsort(-scores[keep_arr], kind="stable")]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def postprocess(
    level_outputs: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    image_size: Tuple[int, int],
    p: PostProcessing,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    numpy :func:`fcos_d2.modeling.inference.fcos_postprocess` for one image.

    Args:
        level_outputs: per level (C, H_i, W_i) class logits, (4, H_i, W_i) distances in
            pixels, (1, H_i, W_i) centerness logits.
        image_size: (h, w) of the resized image (boxes are clipped to it).
        p: the post-processing settings (the exported model's, :func:`load_metadata`).

    Returns:
        boxes (K, 4), scores (K,), classes (K,) in the resized image, by decreasing score.
    """
    shapes = [tuple(o[0].shape[-2:]) for o in level_outputs]
    locations = compute_locations(shapes, p)
    thresh, k = p.score_thresh, p.topk_candidates
    all_boxes, all_scores, all_classes = [], [], []
    for (logits, box_reg, ctr), points in zip(level_outputs, locations):
        c = logits.shape[0]
        prob = _sigmoid(logits.reshape(c, -1).T.astype(np.float32))  # (L_i, C)
        score = prob * _sigmoid(ctr.reshape(-1).astype(np.float32))[:, None]
        if p.sqrt_score:
            score = np.sqrt(score)
        passed = (score if p.thresh_with_centerness else prob) > thresh
        loc, cls = np.nonzero(passed)
        cand = score[loc, cls]
        if len(cand) > k:
            top = np.argpartition(-cand, k - 1)[:k]
            loc, cls, cand = loc[top], cls[top], cand[top]
        ltrb = box_reg.reshape(4, -1).T[loc]
        q = points[loc]
        all_boxes.append(np.concatenate((q - ltrb[:, :2], q + ltrb[:, 2:]), axis=1))
        all_scores.append(cand)
        all_classes.append(cls)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    scores = np.concatenate(all_scores).astype(np.float32)
    classes = np.concatenate(all_classes).astype(np.int64)
    if p.clip:
        h, w = image_size
        if p.clip == "image_minus_one":
            h, w = h - 1, w - 1
        boxes = np.minimum(np.maximum(boxes, 0), np.array([w, h, w, h], dtype=np.float32))
    nms_boxes = boxes + np.array([0, 0, 1, 1], np.float32) if p.nms_plus_one else boxes
    keep = nms_per_class(nms_boxes, scores, classes, p.nms_thresh)[: p.max_detections]
    return boxes[keep], scores[keep], classes[keep]


def _openvino_precision(compiled: Any) -> str:
    """The inference precision a compiled OpenVINO model runs in: "f32", "bf16", ..."""
    value = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    names = {
        "float32": "f32",
        "f32": "f32",
        "bfloat16": "bf16",
        "bf16": "bf16",
        "float16": "f16",
        "f16": "f16",
    }
    for key, name in names.items():
        if key in value.lower():
            return name
    return value


class ExportedPredictor:
    """
    Detectron2 ``DefaultPredictor``'s job for an exported model: an image in (BGR uint8
    (H, W, 3), or grayscale, BGRA, 16-bit: the inputs of ``fcos_d2.predictor.Predictor``,
    converted by the same :func:`fcos_d2.images.to_bgr_uint8`; small ones padded, see
    :meth:`prepare`), detections in original-image pixels out, with ONNX Runtime or OpenVINO.

    Args:
        model_path: ``model.onnx`` / ``model_network.onnx`` written by tools/export_model.py
            (its ``.json`` beside it), or an INT8 model of ``--quantize int8``:
            ``model_int8.xml`` (OpenVINO IR) or ``model_network_int8.onnx`` (QDQ ONNX).
        runtime: "onnxruntime" or "openvino"; default: "openvino" for an ``.xml`` IR, else
            "onnxruntime".
        precision: OpenVINO's inference precision, "f32", "bf16" or "auto" (bf16 where
            the device executes it natively, as OpenVINO reports in its
            OPTIMIZATION_CAPABILITIES, else f32); ONNX Runtime runs fp32. Where OpenVINO
            runs another precision than asked (bf16 on a CPU without native bf16 falls back
            to f32), a warning says so; :attr:`precision` is the one it runs. "int8" (or
            "auto") for an INT8 model: its quantized layers run in int8, the rest (and the
            post-processing) in fp32; "int8" with a floating-point model is refused.
        device: OpenVINO device ("CPU", "GPU"); ONNX Runtime uses CUDA when its GPU package
            and a GPU are present, else the CPU.
        num_threads: threads of the runtime (None: its default).
    """

    def __init__(
        self,
        model_path: str,
        runtime: Optional[str] = None,
        precision: str = "f32",
        device: str = "CPU",
        num_threads: Optional[int] = None,
    ):
        if runtime is None:
            runtime = "openvino" if model_path.endswith(".xml") else "onnxruntime"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if runtime == "onnxruntime" and precision == "bf16":
            raise ValueError("ONNX Runtime runs fp32 here; use runtime='openvino' for bf16")
        if runtime == "onnxruntime" and model_path.endswith(".xml"):
            raise ValueError(f"{model_path} is an OpenVINO IR: use runtime='openvino'")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"exported model not found: {model_path}")
        self.meta = load_metadata(model_path)
        #: The exported model's post-processing settings.
        self.postprocessing = PostProcessing.from_dict(
            self.meta.get("postprocessing", self.meta)  # format 1 kept them at the top level
        )
        self.runtime = runtime
        int8 = self.meta.get("quantization", {}).get("precision") == "int8"
        if precision == "int8" and not int8:
            raise ValueError(
                f"precision='int8' needs an INT8 model (tools/export_model.py --quantize "
                f"int8: model_int8.xml or model_network_int8.onnx); {model_path} is fp32"
            )
        if int8 and precision not in ("int8", "auto", "f32"):
            raise ValueError(f"{model_path} is an INT8 model; precision must be 'int8'")
        if int8:
            precision = "f32"  # OpenVINO's hint for the layers left in floating point
        #: The precision the runtime runs in ("f32", "bf16", or "int8" for INT8 models).
        self.precision = "f32"
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            providers = [
                p
                for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                if p in ort.get_available_providers()
            ]
            self._session = ort.InferenceSession(model_path, options, providers=providers)
            self.precision = "int8" if int8 else "f32"
        else:
            import openvino as ov

            core = ov.Core()
            if precision == "auto":
                native = "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
                native = native and (device != "CPU" or onednn_allows_bf16())
                precision = "bf16" if native else "f32"
            config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
            if num_threads:
                config["INFERENCE_NUM_THREADS"] = num_threads
            self._compiled = core.compile_model(core.read_model(model_path), device, config)
            self.precision = "int8" if int8 else _openvino_precision(self._compiled)
            if not int8 and self.precision != precision:
                warnings.warn(
                    f"OpenVINO runs {model_path} in {self.precision}, not {precision}: this "
                    f"{device} has no native {precision} (OPTIMIZATION_CAPABILITIES "
                    f"{core.get_property(device, 'OPTIMIZATION_CAPABILITIES')})",
                    stacklevel=2,
                )

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        if self.runtime == "onnxruntime":
            names = [i.name for i in self._session.get_inputs()]
            return self._session.run(None, dict(zip(names, inputs)))
        result = self._compiled(inputs)
        return [result[o] for o in self._compiled.outputs]

    def pad_value(self) -> np.ndarray:
        """(3,) the pixel value the model input is padded with: the model's pixel mean
        (its channel order), which the exported graph normalises to 0, the value it and
        Detectron2 pad with. Metadata written before fcos-d2 recorded the mean: 0."""
        return np.asarray(self.meta.get("pixel_mean", (0.0, 0.0, 0.0)), dtype=np.float32)

    def prepare(self, image: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
        """
        An image (see :func:`fcos_d2.images.to_bgr_uint8`: BGR, grayscale, BGRA, 16-bit) ->
        the model's input (3, H, W) float32, resized as DefaultPredictor resizes and in the
        model's channel order, and the (h, w) of the resized image in it. Where a side of
        the resized image falls below the exported model's minimum (``min_side``, e.g.
        17x999 -> 9x512), the input is padded bottom/right to it with :meth:`pad_value`;
        else (H, W) == (h, w). Raises InputError (a ValueError) naming what was given for
        anything else (None, lists, empty images, other shapes and dtypes).
        """
        image = to_bgr_uint8(image)
        if self.meta["input_format"] == "RGB":
            image = image[:, :, ::-1]
        resized = resize_shortest_edge(
            image, self.meta["min_size_test"], self.meta["max_size_test"]
        )
        chw = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)
        h, w = resized.shape[:2]
        min_side = int(self.meta.get("min_side", 0))
        if min(h, w) < min_side:
            padded = np.empty((3, max(h, min_side), max(w, min_side)), np.float32)
            padded[...] = self.pad_value()[:, None, None]
            padded[:, :h, :w] = chw
            chw = padded
        return chw, (h, w)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """An image -> the model's input (3, H, W) float32: :meth:`prepare` without the
        resized size (equal to (H, W) unless the image was padded to ``min_side``)."""
        return self.prepare(image)[0]

    def run_resized(
        self,
        image: np.ndarray,
        original_size: Tuple[int, int],
        resized_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, np.ndarray]:
        """
        Detections of a (3, H, W) model input (see :meth:`prepare`), in the pixels of an
        original image of (height, width) ``original_size``. ``resized_size``: the (h, w)
        of the resized image at the top left of an input padded bottom/right (default: the
        whole input); boxes are scaled from it and clipped to the original image.

        For a padded input, the network-only model's boxes are clipped to (h, w) before
        NMS, as eager inference clips them; the full model clips them to (H, W) (its
        graph takes the input's size), so a box reaching into the padding may suppress
        another in NMS before it is clipped to the image.
        """
        size = tuple(image.shape[1:])
        h, w = size if resized_size is None else tuple(resized_size)
        oh, ow = original_size
        if not self.meta["network_only"]:
            # A padded input: boxes in the input's pixels (scale 1), scaled from (h, w) here.
            asked = (oh, ow) if (h, w) == size else size
            boxes, scores, classes, count = self._run([image, np.array(asked, dtype=np.int64)])
            n = int(count)
            boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
            if (h, w) == size:
                return {"boxes": boxes, "scores": scores, "classes": classes}
        else:
            # (C, H_i, W_i) per output; an OpenVINO model quantized by NNCF may return one
            # with a leading 1 (seen on distances of a 32-channel model).
            outputs = [o.reshape(o.shape[-3:]) for o in self._run([image])]
            levels = [tuple(outputs[i : i + 3]) for i in range(0, len(outputs), 3)]
            boxes, scores, classes = postprocess(levels, (h, w), self.postprocessing)
        boxes, keep = to_original_size(boxes, (h, w), (oh, ow))
        return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}

    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """An image (BGR uint8 (H, W, 3), or grayscale, BGRA, 16-bit: see :meth:`prepare`)
        -> {"boxes": (K, 4) float32 x0 y0 x1 y1, "scores": (K,), "classes": (K,) int64}, in
        original-image pixels, by decreasing score."""
        model_input, resized_size = self.prepare(image)
        return self.run_resized(model_input, image.shape[:2], resized_size)
