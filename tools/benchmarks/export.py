"""Section 1b: the whole detector exported (ONNX in ONNX Runtime and OpenVINO f32 / bf16 /
INT8, torch.export) at 800x1333 beside torchvision's eager fp32."""

import contextlib
import os
import tempfile
import time
from typing import Dict, List

import torch
from detectron2.structures import Boxes, Instances

from .common import Context, detections_agree, image, timeit_interleaved, tiny_builtin_dataset
from .registry import section


def int8_models(cfg, model, folder: str, calibration_dataset: str, n: int, size=None) -> dict:
    """{"openvino_int8": IR, "onnxruntime_int8": QDQ ONNX} of ``model``'s network-only ONNX,
    calibrated on ``n`` images of ``calibration_dataset`` (fcos_d2/quantize.py)."""
    import cv2
    from detectron2.data import DatasetCatalog

    from fcos_d2.export import export_model
    from fcos_d2.quantize import calibration_inputs, quantize_onnxruntime, quantize_openvino

    kwargs = {"sample_size": size} if size else {}
    network = export_model(model, cfg, folder, "onnx", network_only=True, **kwargs)
    dicts = DatasetCatalog.get(calibration_dataset)
    step = max(1, len(dicts) // n)
    images = [cv2.imread(d["file_name"], cv2.IMREAD_COLOR) for d in dicts[::step][:n]]
    calibration = calibration_inputs(network, images)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return {
            "openvino_int8": quantize_openvino(network, calibration, folder),
            "onnxruntime_int8": quantize_onnxruntime(network, calibration, folder),
        }


def export_section(
    ctx: Context, tv, ours, cfg, size=(800, 1333), calibration=("fcos_synth_val", 16)
) -> Dict[str, object]:
    """
    Exported fcos-d2 (ONNX in ONNX Runtime and OpenVINO f32/bf16, torch.export program;
    INT8 models calibrated on ``calibration`` = (dataset, images)) against torchvision's
    eager fp32 at ``size``, post-processing included, timed interleaved; and whether the
    fp32 paths' detections agree with torchvision's.
    """
    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.export import export_model

    threads = ctx.threads
    h, w = size
    img = image(h, w)
    tv.transform.min_size = (min(h, w),)
    tv.transform.max_size = max(h, w)
    folder = tempfile.mkdtemp(prefix="fcos_d2_bench_export_")
    t0 = time.perf_counter()
    onnx_path = export_model(ours, cfg, folder, "onnx", sample_size=(h, w))
    pt2_path = export_model(ours, cfg, folder, "torch_export", sample_size=(h, w))
    export_s = time.perf_counter() - t0
    program = torch.export.load(pt2_path).module()
    runners = {
        "onnxruntime_fp32": ExportedPredictor(onnx_path, "onnxruntime", num_threads=threads),
        "openvino_fp32": ExportedPredictor(onnx_path, "openvino", "f32", num_threads=threads),
        "openvino_bf16": ExportedPredictor(
            onnx_path, "openvino", ctx.precision, num_threads=threads
        ),
    }
    ctx.ran["inference_export_openvino_bf16"] = runners["openvino_bf16"].precision
    # INT8 (network-only model + numpy post-processing), calibrated on a few built-in images
    # resized by the config's test resize: enough for speed (accuracy: section 6).
    t0 = time.perf_counter()
    int8 = int8_models(cfg, ours, folder, *calibration, size=(h, w))
    int8_s = time.perf_counter() - t0
    for name, model_path in int8.items():
        runners[name] = ExportedPredictor(model_path, precision="int8", num_threads=threads)
    x = img.numpy()

    def as_output(boxes, scores, classes) -> List[dict]:
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.as_tensor(boxes)),
            scores=torch.as_tensor(scores),
            pred_classes=torch.as_tensor(classes),
        )
        return [{"instances": inst}]

    def run_pt2():
        b, s_, c, n = program(img, torch.tensor([h, w]))
        n = int(n)
        return as_output(b[:n], s_[:n], c[:n])

    fns = {"torchvision_fp32": lambda: tv([img / 255.0]), "torch_export_fp32": run_pt2}
    for name, predictor in runners.items():
        fns[name] = lambda p=predictor: as_output(*p.run_resized(x, (h, w)).values())
    with torch.no_grad():
        row: Dict[str, object] = {
            name: 1.0 / t for name, t in timeit_interleaved(fns, ctx.repeats).items()
        }
        tv_out = fns["torchvision_fp32"]()
        row["agreement"] = {
            name: detections_agree(tv_out, fns[name]())
            for name in ("onnxruntime_fp32", "openvino_fp32", "torch_export_fp32")
        }
    row["export_s"] = export_s
    row["quantize_int8_s"] = int8_s
    print(
        f"  {h}x{w}: "
        + ", ".join(
            f"{k} {v:.3f} img/s"
            for k, v in row.items()
            if isinstance(v, float) and not k.endswith("_s")
        )
    )
    for name, agreement in row["agreement"].items():
        print(f"    {name} detections agree with torchvision: {agreement}")
    return row


@section(
    "export",
    "1b",
    "exported models (ONNX Runtime, OpenVINO, torch.export) at 800x1333",
    key="inference_export",
)
def run(ctx: Context) -> Dict[str, object]:
    """The exported paths' images/s beside torchvision's eager fp32 and their ratios: the
    fastest fp32 runtime, OpenVINO bf16, and the faster INT8 model (also against the
    exported bf16 and fp32 paths it replaces, from the same interleaved run)."""
    ours, cfg = ctx.twin
    if ctx.smoke:
        with tiny_builtin_dataset(2) as (name, _):
            ex = export_section(ctx, ctx.tv, ours, cfg, size=(256, 320), calibration=(name, 2))
    else:
        ex = export_section(ctx, ctx.tv, ours, cfg)
    tv_speed = ex["torchvision_fp32"]
    fp32 = {
        k: v
        for k, v in ex.items()
        if isinstance(v, float) and k.endswith("_fp32") and k != "torchvision_fp32"
    }
    best = max(fp32, key=fp32.get)
    ctx.ratios["inference_800x1333_export_fp32"] = fp32[best] / tv_speed
    ctx.ratios["inference_800x1333_export_bf16"] = ex["openvino_bf16"] / tv_speed
    int8 = max(ex["openvino_int8"], ex["onnxruntime_int8"])
    ctx.ratios["inference_800x1333_export_int8"] = int8 / tv_speed
    # INT8 against the exported paths it replaces (same run, interleaved).
    ex["int8_vs_export_bf16"] = int8 / ex["openvino_bf16"]
    ex["int8_vs_export_fp32"] = int8 / fp32[best]
    ex["fastest_fp32"] = best
    return ex
