#!/usr/bin/env python
"""
Side-by-side speed and memory benchmark of fcos-d2 against torchvision's FCOS, in one
process with the same threads and inputs. Not a test: figures depend on the machine.

    python tools/benchmark.py                  # full run
    python tools/benchmark.py --quick          # a few minutes on 2 cores
    python tools/benchmark.py --only export ap # some sections (--skip: all but some)
    python tools/benchmark.py --list           # the sections
    python tools/benchmark.py --json out.json  # also write the results

Each section is a module of tools/benchmarks/ (see its __init__); --smoke runs every
section at its smallest setting (tiny inputs, one repeat), which checks that they run.
Ratios in the JSON are fcos-d2 speed / torchvision speed (higher is better).
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Dict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from benchmarks import Context, cpu_model_name, ordered, select  # noqa: E402

from fcos_d2 import compat  # noqa: E402
from fcos_d2.modeling.precision import cpu_capability  # noqa: E402

#: The sections of --scale (at COCO size).
SCALE = ("cocosize", "loader", "checks", "verify")


def parse_args(argv=None) -> argparse.Namespace:
    listing = "\n".join(f"  {s.name:9s} ({s.number}) {s.title}" for s in ordered())
    p = argparse.ArgumentParser(
        description=__doc__ + "\nsections:\n" + listing,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    level = p.add_mutually_exclusive_group()
    level.add_argument("--quick", action="store_true", help="fewer repeats and box counts")
    level.add_argument(
        "--smoke", action="store_true", help="every section at its smallest setting (no figures)"
    )
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--only", nargs="*", default=[], help="run only these sections")
    p.add_argument("--skip", nargs="*", default=[], help="sections to skip")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument(
        "--scale", action="store_true", help=f"run only the sections at scale ({' '.join(SCALE)})"
    )
    p.add_argument(
        "--weights",
        default=Context.weights,
        help="trained model for the bf16-vs-fp32 AP check (section 6)",
    )
    p.add_argument("--weights-config", default=Context.weights_config)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16"],
        help="what the 'bf16' paths run in: 'auto' (bf16 where the CPU executes it "
        "natively, else fp32, so that no path is slower than fp32 unasked) or "
        "'bf16' (always; emulated, and slow, on other CPUs). The JSON records "
        "what each path ran in (precision_ran)",
    )
    p.add_argument(
        "--coco-size-images",
        type=int,
        default=Context.coco_size_images,
        help="images of the generated validation set of section 7",
    )
    p.add_argument(
        "--checks-images",
        type=int,
        default=Context.checks_images,
        help="images of the generated training set of section 9",
    )
    args = p.parse_args(argv)
    if args.scale:
        args.only = list(SCALE)
    try:
        args.sections = select(args.only, args.skip)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.list:
        for s in ordered():
            print(f"{s.name:9s} ({s.number}) {s.title}")
        return {}
    torch.set_num_threads(args.threads)
    ctx = Context(
        level="smoke" if args.smoke else "quick" if args.quick else "full",
        threads=args.threads,
        precision=args.precision,
        weights=args.weights,
        weights_config=args.weights_config,
        coco_size_images=args.coco_size_images,
        checks_images=args.checks_images,
    )
    print(f"torch {torch.__version__}, {args.threads} threads, detectron2 {compat.D2_VERSION}")
    cap = cpu_capability()
    results: Dict[str, object] = {
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": {
            "model": cpu_model_name(),
            **dataclasses.asdict(cap),
            "native_bf16": cap.native_bf16,
        },
        "requested_reduced_precision": args.precision,
        "precision_ran": ctx.ran,
    }
    print(f"CPU: {cpu_model_name()}, {cap.describe()}; reduced-precision paths: {args.precision!r}")
    seconds: Dict[str, float] = {}
    for s in args.sections:
        print(f"{s.number}. {s.title}")
        start = time.perf_counter()
        out = s.run(ctx)
        seconds[s.name] = time.perf_counter() - start
        if out is not None:
            results[s.key] = out
    results["section_seconds"] = seconds
    print("seconds per section:", ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    results["ratios"] = ctx.ratios
    print("ratios (fcos-d2 / torchvision speed):", json.dumps(ctx.ratios, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
