"""
INT8 post-training quantization of exported FCOS networks, for OpenVINO (NNCF) and ONNX
Runtime (static QDQ), without torch.

What is quantized is the network only (``model_network.onnx``, tools/export_model.py
``--network-only``: normalisation, backbone, FPN and head); the post-processing (box
decoding, thresholds, top-k, NMS) stays in floating point in numpy
(:func:`fcos_d2.deploy.postprocess`). Calibration inputs are images prepared exactly as
:class:`fcos_d2.deploy.ExportedPredictor` prepares them (the config's test resize), so
the activation ranges are those the deployed model sees.

    model_int8.xml / .bin + model_int8.json     OpenVINO IR quantized by NNCF
    model_network_int8.onnx + .json             ONNX with QuantizeLinear/DequantizeLinear
                                                (per-channel int8 weights, uint8 activations)

The ``.json`` beside each is the network-only model's metadata plus ``"quantization"``
(precision, tool and version, calibration size, accuracy control), which
:class:`~fcos_d2.deploy.ExportedPredictor` reads.
"""

import json
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .deploy import ExportedPredictor, load_metadata
from .errors import InputError
from .postprocess import PostProcessing

__all__ = [
    "QUANTIZE_RUNTIMES",
    "calibration_inputs",
    "quantize_onnxruntime",
    "quantize_openvino",
]

#: Runtimes :func:`quantize_openvino` / :func:`quantize_onnxruntime` write INT8 models for.
QUANTIZE_RUNTIMES = ("openvino", "onnxruntime")


def _check_network_model(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise InputError(f"exported model not found: {path}")
    meta = load_metadata(path)
    if not path.endswith(".onnx") or not meta.get("network_only"):
        raise InputError(
            f"INT8 quantization takes the network-only ONNX (tools/export_model.py "
            f"--network-only, model_network.onnx), got {path}"
        )
    if meta.get("quantization"):
        raise InputError(f"{path} is quantized already")
    return meta


def calibration_inputs(network_model: str, images: Iterable[np.ndarray]) -> List[np.ndarray]:
    """The network's inputs, (3, H, W) float32 each, for BGR uint8 images (or any image
    :class:`~fcos_d2.deploy.ExportedPredictor` takes), prepared as it prepares them."""
    predictor = ExportedPredictor(network_model, "onnxruntime")
    return [predictor.preprocess(image) for image in images]


def _write_metadata(
    meta: Dict[str, Any], model_path: str, quantization: Dict[str, Any]
) -> Dict[str, Any]:
    meta = {**meta, "quantization": {"precision": "int8", **quantization}}
    with open(os.path.splitext(model_path)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def quantize_openvino(
    network_model: str,
    calibration: Sequence[np.ndarray],
    output: str,
    *,
    validation: Optional[Sequence[Any]] = None,
    validation_fn: Optional[Callable[[ExportedPredictor, Sequence[Any]], float]] = None,
    max_drop: Optional[float] = None,
) -> str:
    """
    Quantize ``network_model`` (a network-only ONNX) with NNCF's ``nncf.quantize``
    (default preset: symmetric int8 weights and activations, per-channel weights) on
    ``calibration`` (inputs from :func:`calibration_inputs`) and write
    ``output/model_int8.xml`` (+ ``.bin``, ``.json``); returns the ``.xml`` path.

    With ``max_drop`` (and ``validation`` items and ``validation_fn(predictor, items) ->
    metric``, higher is better, e.g. AP in points), NNCF's
    ``quantize_with_accuracy_control`` keeps layers in floating point until the metric of
    the quantized model is at most ``max_drop`` below the fp32 model's; the two metrics
    are written into the ``.json``.
    """
    import nncf
    import openvino as ov

    meta = _check_network_model(network_model)
    if not calibration:
        raise InputError("INT8 quantization needs at least one calibration image")
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "model_int8.xml")
    model = ov.Core().read_model(network_model)
    dataset = nncf.Dataset(list(calibration))
    info: Dict[str, Any] = {
        "tool": f"nncf {nncf.__version__}",
        "runtime": "openvino",
        "calibration_images": len(calibration),
    }
    if max_drop is None:
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
    else:
        if validation is None or validation_fn is None:
            raise ValueError("max_drop needs validation items and a validation_fn")
        quantized, info["accuracy_control"] = _with_accuracy_control(
            model, meta, dataset, calibration, validation, validation_fn, max_drop
        )
    ov.save_model(quantized, path, compress_to_fp16=False)
    _write_metadata(meta, path, info)
    return path


class _CompiledPredictor(ExportedPredictor):
    """An ExportedPredictor of an OpenVINO model compiled already (NNCF's candidates)."""

    def __init__(self, compiled: Any, meta: Dict[str, Any]):  # the model exists: no loading
        self.meta = meta
        self.postprocessing = PostProcessing.from_dict(meta["postprocessing"])
        self.runtime = "openvino"
        self.precision = "int8"
        self._compiled = compiled


def _with_accuracy_control(model, meta, dataset, calibration, validation, validation_fn, max_drop):
    """NNCF's accuracy-controlled quantization; validation runs through ExportedPredictor
    (numpy post-processing included), so the metric is the deployed model's."""
    import nncf
    import openvino as ov

    def validate(compiled: Any, items: Iterable[Any]) -> float:
        return float(validation_fn(_CompiledPredictor(compiled, meta), list(items)))

    quantized = nncf.quantize_with_accuracy_control(
        model,
        dataset,
        nncf.Dataset(list(validation)),
        validation_fn=validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calibration),
    )
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin's default may be bf16
    metrics = {
        name: validate(core.compile_model(m, "CPU", f32), validation)
        for name, m in (("fp32", model), ("int8", quantized))
    }
    return quantized, {"max_drop": max_drop, **{f"metric_{k}": v for k, v in metrics.items()}}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]):
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by the MinMax calibrator
        raise NotImplementedError


def _unshare_weights(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto``) with a copy of each float initializer for every
    node after the first that uses it: the head's convolutions and GroupNorm (exported as
    InstanceNormalization) share their weights across levels, and ONNX Runtime's QDQ
    quantizer refuses weights shared between nodes ("Quantization parameter shared mode is
    not supported for weight yet"). Same outputs; shared weights are then stored once per
    use."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    seen: Dict[str, int] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
                continue
            uses = seen.get(name, 0)
            seen[name] = uses + 1
            if uses:
                copy = numpy_helper.from_array(
                    numpy_helper.to_array(inits[name]), f"{name}__{uses}"
                )
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
    return model


def quantize_onnxruntime(network_model: str, calibration: Sequence[np.ndarray], output: str) -> str:
    """
    ONNX Runtime static quantization of ``network_model`` (a network-only ONNX): QDQ
    format, per-channel int8 weights, uint8 activations with MinMax ranges from
    ``calibration``. Writes ``output/model_network_int8.onnx`` (+ ``.json``) and returns
    its path.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = _check_network_model(network_model)
    if not calibration:
        raise InputError("INT8 quantization needs at least one calibration image")
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "model_network_int8.onnx")
    reader = type("Reader", (_Reader, CalibrationDataReader), {})("image", calibration)
    with tempfile.TemporaryDirectory(prefix="fcos_d2_int8_") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        unshared = os.path.join(tmp, "unshared.onnx")
        onnx.save(_unshare_weights(onnx.load(network_model)), unshared)
        # Symbolic shape inference cannot follow the dynamic height/width; ONNX's own can.
        quant_pre_process(unshared, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            path,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    info = {
        "tool": f"onnxruntime {onnxruntime.__version__}",
        "runtime": "onnxruntime",
        "calibration_images": len(calibration),
    }
    _write_metadata(meta, path, info)
    return path
