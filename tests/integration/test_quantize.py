"""
INT8 post-training quantization (fcos_d2/quantize.py, tools/export_model.py --quantize int8):
an untrained quickstart model quantized on a few calibration images, for OpenVINO (NNCF)
and ONNX Runtime (QDQ), really holds int8 layers, stays close to the fp32 network and runs
in ExportedPredictor without torch; the tool refuses what cannot be quantized.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import openvino as ov
import pytest
from detectron2.data import DatasetCatalog

from fcos_d2.deploy import ExportedPredictor
from fcos_d2.errors import InputError
from fcos_d2.quantize import calibration_inputs, quantize_onnxruntime
from helpers import QUICKSTART, ROOT, TINY_OPTS, untrained_weights

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export_model as export_tool  # noqa: E402


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_data):
    """{runtime: INT8 model path} and the fp32 network-only model: OpenVINO's from the tool,
    ONNX Runtime's from fcos_d2.quantize on the same calibration images."""
    out = tmp_path_factory.mktemp("int8")
    weights = untrained_weights(out / "untrained.pth")
    xml = export_tool.main(
        ["--config-file", QUICKSTART, "--format", "onnx", "--network-only",
         "--output", str(out), "--quantize", "int8", "--calibration-images", "4",
         "--calibration-dataset", tiny_data["train"], *TINY_OPTS, "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip
    network = str(out / "model_network.onnx")
    images = [cv2.imread(d["file_name"]) for d in DatasetCatalog.get(tiny_data["train"])[:4]]
    ort_path = quantize_onnxruntime(network, calibration_inputs(network, images), str(out))
    return {"openvino": xml, "onnxruntime": ort_path}, network


def test_int8_models_hold_quantized_layers(quantized):
    paths, _ = quantized
    ops = {op.get_type_name() for op in ov.Core().read_model(paths["openvino"]).get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 quantizers, run as int8 by the CPU plugin
    graph = onnx.load(paths["onnxruntime"]).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("QuantizeLinear") >= 10 and "DequantizeLinear" in kinds
    weight_scales = [i for i in graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1]
    assert any(i.dims[0] > 1 for i in weight_scales)  # per-channel weight scales
    for path in paths.values():
        with open(os.path.splitext(path)[0] + ".json") as f:
            meta = json.load(f)
        assert meta["network_only"] and meta["quantization"]["precision"] == "int8"
        assert meta["quantization"]["calibration_images"] == 4


def test_int8_network_close_to_fp32(quantized, tiny_data):
    """The quantized network's raw outputs (class logits, distances, centerness) follow the
    fp32 network's: each correlates with it (a wrong scale, shape or graph would not), and
    the error is a fraction of the outputs' spread. (Loose bounds: an untrained network
    calibrated on 4 images quantizes worse than a trained one; docs/deployment.md gives
    the trained quickstart model's AP in INT8.)"""
    paths, network = quantized
    fp32 = ExportedPredictor(network)
    for runtime, path in paths.items():
        int8 = ExportedPredictor(path)
        assert int8.runtime == runtime and int8.precision == "int8"
        errors = []
        for d in DatasetCatalog.get(tiny_data["val"]):  # not calibrated on, same kind
            x = fp32.preprocess(cv2.imread(d["file_name"]))
            for a, b in zip(int8._run([x]), fp32._run([x])):
                a = a.reshape(a.shape[-3:])  # NNCF's IR may add a leading 1 (see deploy.py)
                assert a.shape == b.shape
                assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.85, runtime
                errors.append(np.sqrt(((a - b) ** 2).mean() / b.var()))
        assert np.mean(errors) < 0.25, runtime


def test_int8_runs_without_torch(quantized):
    paths, _ = quantized
    code = f"""
import sys
sys.modules["torch"] = None
import numpy as np
from fcos_d2.deploy import ExportedPredictor
image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
for path in {list(paths.values())!r}:
    p = ExportedPredictor(path, precision="int8")
    out = p(image)
    assert p.precision == "int8" and out["boxes"].shape[1] == 4, path
assert not any(m.startswith(("torch", "detectron2")) for m in sys.modules if sys.modules[m])
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_int8_precision_needs_an_int8_model(quantized):
    paths, network = quantized
    with pytest.raises(ValueError, match="precision='int8' needs an INT8 model"):
        ExportedPredictor(network, precision="int8")
    with pytest.raises(ValueError, match="is an OpenVINO IR: use runtime='openvino'"):
        ExportedPredictor(paths["openvino"], "onnxruntime")
    with pytest.raises(InputError, match="quantized already"):
        quantize_onnxruntime(paths["onnxruntime"], [np.zeros((3, 160, 160), np.float32)], "/tmp")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--format", "torch_export", "--quantize", "int8"], "--quantize int8 needs --format onnx"),
        (
            ["--format", "onnx", "--quantize", "int8", "--quantize-runtime", "tensorrt"],
            "--quantize-runtime 'tensorrt' cannot run INT8",
        ),
        (
            ["--format", "onnx", "--quantize", "int8", "--quantize-runtime", "onnxruntime",
             "--max-ap-drop", "1"],
            "--max-ap-drop uses NNCF's accuracy control",
        ),
        (["--format", "onnx", "--max-ap-drop", "1"], "--max-ap-drop needs --quantize int8"),
    ],
)  # fmt: skip
def test_tool_refuses_what_cannot_be_quantized(tmp_path, flags, message):
    weights = untrained_weights(tmp_path / "w.pth")
    with pytest.raises(InputError, match=message):
        export_tool.main(
            ["--config-file", QUICKSTART, "--output", str(tmp_path), *flags, *TINY_OPTS,
             "MODEL.WEIGHTS", str(weights)]
        )  # fmt: skip
    assert not os.path.exists(tmp_path / "model_network.onnx")  # refused before exporting


def test_accuracy_control_records_both_metrics(quantized, tiny_data, tmp_path):
    """--max-ap-drop's path: NNCF's quantize_with_accuracy_control calls the metric with
    predictors of its compiled candidates (post-processing included); fp32's and the
    result's metric land in the .json."""
    from fcos_d2.quantize import quantize_openvino

    _, network = quantized
    dicts = DatasetCatalog.get(tiny_data["val"])
    images = [cv2.imread(d["file_name"]) for d in dicts]
    calls = []

    def metric(predictor, items):  # any "higher is better" figure of the detections
        calls.append(type(predictor).__name__)
        return float(np.mean([predictor(im)["scores"].sum() for im in items]))

    path = quantize_openvino(
        network,
        calibration_inputs(network, images),
        str(tmp_path),
        validation=images,
        validation_fn=metric,
        max_drop=1e6,
    )
    with open(os.path.splitext(path)[0] + ".json") as f:
        control = json.load(f)["quantization"]["accuracy_control"]
    fp32 = metric(ExportedPredictor(network, "openvino"), images)
    int8 = metric(ExportedPredictor(path), images)
    assert control["max_drop"] == 1e6
    assert control["metric_fp32"] == pytest.approx(fp32, rel=1e-4)
    assert control["metric_int8"] == pytest.approx(int8, rel=1e-4)
    assert "_CompiledPredictor" in calls
