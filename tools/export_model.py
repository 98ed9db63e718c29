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
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.engine import FCOSCheckpointer
    from fcos_d2.export import check_exportable, export_model
    from fcos_d2.registry import upgrade_legacy_names

    if not os.path.isfile(args.config_file):
        raise InputError(f"config file not found: {args.config_file}")
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise InputError(f"config: {e.args[0] if e.args else e}") from e
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
