#!/usr/bin/env python
"""
Write registered datasets (default: the built-in fcos_synth_train and fcos_synth_val) as
Pascal VOC or YOLO folders, one folder a dataset: OUT/<NAME>/.

    python tools/export_dataset.py --format voc --out output/voc
    python train_net.py --config-file configs/quickstart.yaml \\
        --voc-train output/voc/fcos_synth_train train --voc-test output/voc/fcos_synth_val val
    python tools/export_dataset.py --format yolo --out output/yolo
    python train_net.py --config-file configs/quickstart.yaml \\
        --yolo-train output/yolo/fcos_synth_train --yolo-test output/yolo/fcos_synth_val

A VOC folder's split (ImageSets/Main/<split>.txt) is the part of the dataset's name after
its last "_" (train, val), or --split. See fcos_d2/data/export_formats.py.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fcos_d2  # noqa: E402, F401  (registers the built-in datasets)
from fcos_d2.data.export_formats import FORMATS, export_dataset  # noqa: E402
from fcos_d2.errors import InputError  # noqa: E402

DEFAULT_DATASETS = ["fcos_synth_train", "fcos_synth_val"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS, help="folder format to write")
    p.add_argument(
        "--dataset",
        action="append",
        metavar="NAME",
        help="registered dataset to write (repeatable; default: "
        + ", ".join(DEFAULT_DATASETS)
        + ")",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<NAME>/")
    p.add_argument("--split", help="VOC split name (default: the dataset name's last part)")
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    written = []
    for name in args.dataset or DEFAULT_DATASETS:
        out = export_dataset(name, args.format, os.path.join(args.out, name), args.split)
        print(f"Wrote {name} as {args.format}: {out}")
        written.append(out)
    return written


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"export_dataset.py: error: {e}", file=sys.stderr)
        sys.exit(2)
