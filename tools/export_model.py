#!/usr/bin/env python
"""
Export a trained FCOS model for deployment outside Python eager mode (conventions of
Detectron2's tools/deploy/export_model.py: --config-file, --format, --output, trailing
config overrides).

    python tools/export_model.py --config-file configs/quickstart.yaml --format onnx \\
        --output exported/ MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py ... --format onnx --network-only   # no NMS in the graph
    python tools/export_model.py ... --format torch_export          # model.pt2

Writes ``model.onnx`` (whole detector), ``model_network.onnx`` (--network-only) or
``model.pt2``, and beside it ``model.json`` / ``model_network.json`` for the runtime
(fcos_d2.deploy.ExportedPredictor). Inputs and outputs: see fcos_d2/export.py.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcos_d2.errors import InputError  # noqa: E402
from fcos_d2.export import EXPORT_FORMATS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--output", required=True, help="folder to write the model into")
    p.add_argument(
        "--network-only", action="store_true",
        help="ONNX of backbone + head only (raw per-level outputs; the runtime post-processes)",
    )  # fmt: skip
    p.add_argument(
        "--sample-size", type=int, nargs=2, default=(320, 416), metavar=("H", "W"),
        help="image size traced with (the exported model takes any size >= 129)",
    )  # fmt: skip
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
        model, cfg, args.output, args.format, network_only=args.network_only,
        sample_size=args.sample_size,
    )  # fmt: skip
    print(f"wrote {path} and {os.path.splitext(path)[0]}.json")
    return path


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        sys.exit(2)
