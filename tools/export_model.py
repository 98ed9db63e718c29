#!/usr/bin/env python
"""
Export a trained FCOS model for deployment outside Python eager mode (conventions of
Detectron2's tools/deploy/export_model.py: --config-file, --format, --output, trailing
config overrides).

    python tools/export_model.py --config-file configs/quickstart.yaml --format onnx \\
        --output exported/ MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py ... --format onnx --network-only   # no NMS in the graph
    python tools/export_model.py ... --format torch_export          # model.pt2
    python tools/export_model.py ... --check 40   # then compare with eager inference

Writes ``model.onnx`` (whole detector), ``model_network.onnx`` (--network-only) or
``model.pt2``, and beside it ``model.json`` / ``model_network.json`` for the runtime
(fcos_d2.deploy.ExportedPredictor). Inputs and outputs: see fcos_d2/export.py.

INT8 (post-training quantization of the network; the post-processing stays fp32, see
fcos_d2/quantize.py):

    python tools/export_model.py --config-file configs/quickstart.yaml --format onnx \
        --output exported/ --quantize int8 MODEL.WEIGHTS output/quickstart/model_final.pth
    ... --quantize int8 --quantize-runtime onnxruntime     # QDQ ONNX for ONNX Runtime
    ... --quantize int8 --max-ap-drop 1.0                  # NNCF with accuracy control

writes ``model_network.onnx`` and ``model_int8.xml`` (OpenVINO, NNCF) or
``model_network_int8.onnx`` (ONNX Runtime), calibrated on --calibration-images images
(default 300) of --calibration-dataset (default DATASETS.TRAIN[0]) resized as at test time;
--max-ap-drop D validates on DATASETS.TEST[0]. With --check N, the INT8 model's detection
counts are compared with the fp32 model's on the --check images (within 5%, at least 1).

--check N runs the exported model (ONNX: in ONNX Runtime and OpenVINO f32; .pt2: as its
ExportedProgram) and eager fp32 inference on the same inputs: the first N images of
DATASETS.TEST[0] resized as at test time, a blank image, a 4x4 mosaic of those images
(many detections) and a strip (up to 1:10); it prints, per runtime, the images whose detection
count or classes differ and the largest box and score differences, and exits with status 1
when they exceed 1e-2 px or 1e-4.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcos_d2.errors import InputError  # noqa: E402
from fcos_d2.export import EXPORT_FORMATS, MIN_SIDE  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--output", required=True, help="folder to write the model into")
    p.add_argument(
        "--network-only",
        action="store_true",
        help="ONNX of backbone + head only (raw per-level outputs; the runtime post-processes)",
    )
    p.add_argument(
        "--sample-size",
        type=int,
        nargs=2,
        default=(320, 416),
        metavar=("H", "W"),
        help="image size traced with (the exported model takes any size >= 129)",
    )
    p.add_argument(
        "--check",
        type=int,
        default=0,
        metavar="N",
        help="compare with eager inference on N test images and 3 made ones (see above)",
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write an INT8 model of the network (post-training quantization)",
    )
    p.add_argument(
        "--quantize-runtime",
        default="openvino",
        help="runtime of the INT8 model: openvino (NNCF, model_int8.xml) or onnxruntime "
        "(static QDQ, model_network_int8.onnx)",
    )
    p.add_argument("--calibration-images", type=int, default=300, metavar="N")
    p.add_argument(
        "--calibration-dataset", metavar="NAME", help="default: the config's DATASETS.TRAIN[0]"
    )
    p.add_argument(
        "--max-ap-drop",
        type=float,
        metavar="D",
        help="OpenVINO: NNCF's quantization with accuracy control, at most D AP below fp32 on "
        "DATASETS.TEST[0]",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from detectron2.modeling import build_model

    from fcos_d2.config import get_fcos_cfg
    from fcos_d2.engine import FCOSCheckpointer
    from fcos_d2.export import check_exportable, export_model
    from fcos_d2.registry import upgrade_legacy_names

    if not os.path.isfile(args.config_file):
        raise InputError(f"config file not found: {args.config_file}")
    cfg = get_fcos_cfg(args.config_file, args.opts)
    upgrade_legacy_names(cfg)
    cfg.MODEL.DEVICE = "cpu"
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise InputError("export needs trained weights: MODEL.WEIGHTS path/to/model.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS not found: {weights}")
    if args.network_only and args.format != "onnx":
        raise InputError("--network-only exports ONNX only (--format onnx)")
    try:
        check_exportable(cfg, args.format)
    except ValueError as e:
        raise InputError(f"{args.config_file} cannot be exported: {e}") from e
    if min(args.sample_size) < 129:
        raise InputError("--sample-size: both sides must be at least 129")
    check_quantize_args(args)
    model = build_model(cfg)
    FCOSCheckpointer(model, strict=True).load(weights)
    model.eval()
    path = export_model(
        model,
        cfg,
        args.output,
        args.format,
        network_only=args.network_only,
        sample_size=args.sample_size,
    )
    print(f"wrote {path} and {os.path.splitext(path)[0]}.json")
    if args.quantize:
        return quantize(args, cfg, model, path if args.network_only else None)
    if args.check > 0:
        from fcos_d2.export import PARITY_BOX_TOL, PARITY_SCORE_TOL, compare_with_eager

        report = compare_with_eager(model, path, parity_inputs(cfg, args.check))
        for name, row in report.items():
            print(
                f"{name}: {row['images']} images, {row['detections']} detections (eager; "
                f"{row['fewest_per_image']}-{row['most_per_image']} per image); "
                f"count differs on {row['count_differs']}, classes on "
                f"{row['classes_differ']}; max box difference {row['max_box_diff']:.2e} px, "
                f"max score difference {row['max_score_diff']:.2e}"
            )
        if not all(row["agree"] for row in report.values()):
            raise ParityError(
                f"the exported model differs from eager inference by more than "
                f"{PARITY_BOX_TOL} px / {PARITY_SCORE_TOL} in score, or in counts or classes"
            )
        print("the exported model agrees with eager inference")
    return path


def check_quantize_args(args: argparse.Namespace) -> None:
    """Refuse --quantize for formats and runtimes that cannot run INT8 models here."""
    from fcos_d2.quantize import QUANTIZE_RUNTIMES

    if not args.quantize:
        for flag in ("max_ap_drop", "calibration_dataset"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} needs --quantize int8")
        return
    if args.format != "onnx":
        raise InputError(
            f"--quantize int8 needs --format onnx: INT8 models run in OpenVINO or ONNX Runtime, "
            f"not as {args.format} programs"
        )
    if args.quantize_runtime not in QUANTIZE_RUNTIMES:
        raise InputError(
            f"--quantize-runtime {args.quantize_runtime!r} cannot run INT8 models written "
            f"here; choose from {', '.join(QUANTIZE_RUNTIMES)}"
        )
    if args.max_ap_drop is not None and args.quantize_runtime != "openvino":
        raise InputError("--max-ap-drop uses NNCF's accuracy control: --quantize-runtime openvino")
    if args.calibration_images < 1:
        raise InputError("--calibration-images must be at least 1")


def _spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def quantize(args: argparse.Namespace, cfg, model, network: str | None = None) -> str:
    """Write the INT8 model of the network-only ONNX ``network`` (exported beside the
    model first when None)."""
    import cv2
    from detectron2.data import DatasetCatalog

    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.export import compare_counts, export_model, exported_ap
    from fcos_d2.quantize import calibration_inputs, quantize_onnxruntime, quantize_openvino

    if network is None:
        network = export_model(
            model, cfg, args.output, "onnx", network_only=True, sample_size=args.sample_size
        )
    name = args.calibration_dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if name is None:
        raise InputError("--quantize needs calibration images: DATASETS.TRAIN is empty")
    try:
        dicts = _spread(DatasetCatalog.get(name), args.calibration_images)
    except KeyError as e:
        raise InputError(f"--calibration-dataset: dataset {name!r} is not registered") from e
    images = []
    for d in dicts:
        image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"calibration image cannot be read: {d['file_name']}")
        images.append(image)
    calibration = calibration_inputs(network, images)
    print(f"calibrating on {len(calibration)} images of {name}")
    if args.quantize_runtime == "onnxruntime":
        path = quantize_onnxruntime(network, calibration, args.output)
    elif args.max_ap_drop is None:
        path = quantize_openvino(network, calibration, args.output)
    else:
        if not cfg.DATASETS.TEST:
            raise InputError("--max-ap-drop validates on DATASETS.TEST[0], which is empty")
        test = cfg.DATASETS.TEST[0]
        validation = DatasetCatalog.get(test)

        def ap(predictor, items):
            return exported_ap(predictor, cfg, test, items)

        path = quantize_openvino(
            network,
            calibration,
            args.output,
            validation=validation,
            validation_fn=ap,
            max_drop=args.max_ap_drop,
        )
    print(f"wrote {path} and {os.path.splitext(path)[0]}.json")
    if args.check > 0:
        report = compare_counts(
            ExportedPredictor(path, args.quantize_runtime),
            ExportedPredictor(network, args.quantize_runtime),
            parity_inputs(cfg, args.check),
        )
        print(
            f"INT8 against fp32 ({args.quantize_runtime}): {report['within']} of "
            f"{report['images']} images within 5% (at least 1) in detection count; largest "
            f"relative difference {report['largest_relative_difference']:.3f}"
        )
        if not report["agree"]:
            raise ParityError("the INT8 model's detection counts differ from fp32's by > 5%")
    return path


class ParityError(RuntimeError):
    """--check found the exported model's detections different from eager inference's."""


def parity_inputs(cfg, n: int) -> list:
    """(image (3, h, w) float32, (height, width)) pairs for --check: the first ``n`` images
    of DATASETS.TEST[0] resized as the test resize does, a blank image, a 4x4 mosaic of
    them and a strip as long as the exported model allows (up to 1:10), each
    resized the same way."""
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    if not cfg.DATASETS.TEST:
        raise InputError("--check needs a test set: DATASETS.TEST is empty")
    dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:n]
    if not dicts:
        raise InputError(f"--check: dataset {cfg.DATASETS.TEST[0]!r} has no images")
    originals = [utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT) for d in dicts]
    tiles = [cv2.resize(originals[i % len(originals)], (240, 180)) for i in range(16)]
    mosaic = np.concatenate([np.concatenate(tiles[r * 4 : (r + 1) * 4], 1) for r in range(4)], 0)
    # As long as the exported model allows (sides of at least MIN_SIDE), at most 1:10.
    aspect = min(10.0, cfg.INPUT.MAX_SIZE_TEST / (MIN_SIDE + 1))
    strip = cv2.resize(originals[0], (round(130 * aspect), 130))
    blank = np.full((300, 400, 3), 114, np.uint8)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    inputs = []
    for image in [*originals, blank, mosaic, strip]:
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(
            np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32
        )
        inputs.append((tensor, tuple(image.shape[:2])))
    return inputs


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ParityError as e:
        print(f"export_model.py: {e}", file=sys.stderr)
        sys.exit(1)
