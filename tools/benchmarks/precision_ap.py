"""Section 6: the AP of each inference precision and exported runtime on the built-in val
set, with a trained model (by default the quickstart's)."""

import contextlib
import os
import tempfile
from typing import Dict, Optional

import torch

from .common import Context, tiny_builtin_dataset
from .export import int8_models
from .registry import section


def exported_aps(ctx: Context, cfg, model, dataset: str, calibration=None) -> Dict[str, float]:
    """AP of the exported model (ONNX) in ONNX Runtime and OpenVINO f32 / bf16, and of its
    INT8 models (calibrated on ``calibration`` = (dataset, images), by default 300 training
    images), run by fcos_d2.deploy.ExportedPredictor on the dataset's images (resized as
    Detectron2 does)."""
    from detectron2.data import DatasetCatalog

    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.export import export_model, exported_ap

    folder = tempfile.mkdtemp(prefix="fcos_d2_bench_ap_")
    path = export_model(model, cfg, folder, "onnx")
    int8 = int8_models(cfg, model, folder, *(calibration or (cfg.DATASETS.TRAIN[0], 300)))
    dicts = DatasetCatalog.get(dataset)
    out = {}
    for name, model_path, runtime, precision in [
        ("onnxruntime_fp32", path, "onnxruntime", "f32"),
        ("openvino_fp32", path, "openvino", "f32"),
        ("openvino_bf16", path, "openvino", ctx.precision),
        ("openvino_int8", int8["openvino_int8"], "openvino", "int8"),
        ("onnxruntime_int8", int8["onnxruntime_int8"], "onnxruntime", "int8"),
    ]:
        threads = torch.get_num_threads()
        predictor = ExportedPredictor(model_path, runtime, precision, num_threads=threads)
        ctx.ran[f"ap_exported_{name}"] = predictor.precision
        out[name] = exported_ap(predictor, cfg, dataset, dicts)
    return out


def precision_ap_section(
    ctx: Context, config_file: str, weights: Optional[str], *opts: str, calibration=None
) -> Dict[str, float]:
    """COCO AP of a trained model (``weights``; None: untrained, for a smoke run) on its test
    set: eager fp32 and bf16 inference, and the exported model in ONNX Runtime and OpenVINO
    (f32, bf16, INT8)."""
    from detectron2.config import get_cfg
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.engine import FCOSCheckpointer, Trainer

    out = {}
    for precision in ("", ctx.precision):
        cfg = get_cfg()
        fcos_d2.add_fcos_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.MODEL.FCOS.INFERENCE_PRECISION = precision
        torch.manual_seed(0)
        model = build_model(cfg)
        if weights:
            FCOSCheckpointer(model, strict=True).load(weights)
        model.eval()
        if precision:
            ctx.ran["ap_eager_bf16"] = model.inference_precision or "fp32"
        name = cfg.DATASETS.TEST[0]
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            res = inference_on_dataset(
                model,
                Trainer.build_test_loader(cfg, name),
                Trainer.build_evaluator(cfg, name, output_folder="/tmp/fcos_d2_bench_eval"),
            )
        out["bf16" if precision else "fp32"] = res["bbox"]["AP"]
        if precision == "":
            cfg.MODEL.DEVICE = "cpu"
            exported = exported_aps(ctx, cfg, model, name, calibration)
            out.update({f"exported_{k}": v for k, v in exported.items()})
    out["bf16_minus_fp32"] = out["bf16"] - out["fp32"]
    for name in ("openvino_bf16", "openvino_int8", "onnxruntime_int8"):
        out[f"exported_{name}_minus_eager_fp32"] = out[f"exported_{name}"] - out["fp32"]
    out["exported_openvino_bf16_minus_fp32"] = (
        out["exported_openvino_bf16"] - out["exported_openvino_fp32"]
    )
    print("  AP " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
    return out


@section("ap", "6", "AP of bf16 inference vs fp32 on the built-in val set", key="precision_ap")
def run(ctx: Context) -> Optional[Dict[str, float]]:
    """
    AP of bf16 inference against fp32, and of each exported runtime and precision, on the
    built-in val set (needs a trained model, by default the quickstart's
    output/quickstart/model_final.pth; --weights, --weights-config). A smoke run uses the
    untrained model of --weights-config on 4 generated images.
    """
    if ctx.smoke:
        with tiny_builtin_dataset(4) as (name, _):
            return precision_ap_section(
                ctx,
                ctx.weights_config,
                None,
                "DATASETS.TEST",
                f"('{name}',)",
                # An untrained model scores about 0.01 x centerness: keep its detections.
                "MODEL.FCOS.SCORE_THRESH_TEST",
                "0.0",
                calibration=(name, 2),
            )
    if not os.path.isfile(ctx.weights):
        print(f"  skipped: no trained model at {ctx.weights} (run `make demo` first)")
        return None
    return precision_ap_section(ctx, ctx.weights_config, ctx.weights)
