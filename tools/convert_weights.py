#!/usr/bin/env python
"""
Convert a published FCOS checkpoint (or a torchvision ImageNet ResNet) to fcos-d2.

    python tools/convert_weights.py --source torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth out.pth
    python tools/convert_weights.py --source adelaidet FCOS_R_50_1x.pth out.pth
    python tools/convert_weights.py --source fcos FCOS_imprv_R_50_FPN_1x.pth out.pth
    python tools/convert_weights.py --source torchvision-resnet resnet50-0676ba61.pth r50_init.pth

Then run the output with the matching config of configs/compat/ (see its comments).
With --config-file, the result is loaded into that config's model and any missing or
unexpected key is an error.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcos_d2.convert import SOURCES, convert_checkpoint, report  # noqa: E402
from fcos_d2.errors import InputError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("input", help="checkpoint of the source implementation")
    p.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    p.add_argument("--num-classes", type=int, help="fail unless the result has this many classes")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--coco-80",
        dest="coco_80",
        action="store_true",
        default=None,
        help="torchvision: keep the 80 COCO classes of its 91 outputs (default for 91)",
    )
    g.add_argument(
        "--keep-all-classes",
        dest="coco_80",
        action="store_false",
        help="torchvision: keep all of its outputs (91 for COCO)",
    )
    p.add_argument("--config-file", help="check that the result loads into this config's model")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also unpickle Python objects in the input (only for files you trust)",
    )
    return p.parse_args(argv)


def check_loads(config_file: str, weights: str, full_model: bool = True) -> None:
    """
    Load ``weights`` into the model of ``config_file``; raise on unexpected keys or other
    shapes, and (``full_model``) on missing keys.
    """
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.engine import FCOSCheckpointer
    from fcos_d2.registry import upgrade_legacy_names

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(config_file)
    upgrade_legacy_names(cfg)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    checkpointer = FCOSCheckpointer(model, strict=full_model)
    checkpointer.load(weights)
    expected = set(model.state_dict())
    import torch

    got = set(torch.load(weights, map_location="cpu", weights_only=True)["model"])
    unexpected = sorted(got - expected)
    if unexpected:
        raise InputError(f"keys the model of {config_file} does not have: {unexpected[:10]}")


def main(argv=None) -> None:
    args = parse_args(argv)
    # With --config-file the result is written beside OUTPUT and only replaces it once it
    # loads: a failed check leaves no unchecked file and keeps an older OUTPUT as it was.
    out = args.output + ".unchecked" if args.config_file else args.output
    try:
        result = convert_checkpoint(
            args.input,
            out,
            args.source,
            num_classes=args.num_classes,
            coco_80=args.coco_80,
            allow_pickle=args.allow_pickle,
        )
        for line in report(result):
            print(line)
        if args.config_file:
            full = args.source != "torchvision-resnet"  # a backbone init has no FPN/head
            check_loads(args.config_file, out, full_model=full)
            os.replace(out, args.output)
            what = "no missing or unexpected keys" if full else "no unexpected keys (backbone only)"
            print(f"loads into {args.config_file} with {what}")
    finally:
        if out != args.output and os.path.exists(out):
            os.remove(out)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"convert_weights.py: error: {e}", file=sys.stderr)
        sys.exit(2)
