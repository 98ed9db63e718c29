#!/usr/bin/env python
"""
The main job of the README (``make demo``): train FCOS from scratch on the built-in
synthetic dataset with configs/quickstart.yaml (or, on a CPU without native bf16,
configs/quickstart_fp32.yaml: see :func:`choose_config`), evaluate it (COCO AP table and a PNG of
its precision-recall curves), and draw its detections on validation images into a PNG.

    python tools/quickstart.py [CONFIG_OVERRIDES ...]   # e.g. SOLVER.MAX_ITER 100

An interrupted run continues from its last checkpoint (``--resume``).
"""

import json
import os
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

import fcos_d2  # noqa: E402
import train_net  # noqa: E402
from fcos_d2.engine import argument_parser  # noqa: E402
from fcos_d2.evaluation import PR_CURVES_FILE  # noqa: E402
from fcos_d2.predictor import Predictor  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")
#: The recipe for CPUs that do not execute bf16 natively (AVX2-only, AVX-512 without BF16):
#: the same model family, cheaper per iteration, trained in fp32 (configs/quickstart_fp32.yaml).
CONFIG_FP32 = os.path.join(ROOT, "configs", "quickstart_fp32.yaml")


def choose_config() -> str:
    """
    configs/quickstart.yaml on a GPU or a CPU with native bf16 (AVX512-BF16 / AMX), where it
    trains in bf16; configs/quickstart_fp32.yaml on other CPUs, where emulated bf16 is 5-10x
    slower than fp32 and the bf16 recipe would take over an hour in fp32. Logs the choice.
    """
    from fcos_d2.modeling.precision import cpu_capability, native_bf16

    if torch.cuda.is_available():
        chosen, why = CONFIG, "a GPU"
    elif native_bf16("cpu"):
        chosen, why = CONFIG, f"CPU {cpu_capability().describe()}: native bf16"
    else:
        chosen, why = CONFIG_FP32, f"CPU {cpu_capability().describe()}: no native bf16"
    print(f"[quickstart] {why} -> {os.path.relpath(chosen, ROOT)}", flush=True)
    return chosen


def last_eval(metrics_file: str) -> dict:
    """The last evaluation results written to Detectron2's metrics.json."""
    result = {}
    with open(metrics_file) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                result = record
    return result


def draw_grid(cfg, weights: str, out_file: str, num_images: int = 8, threshold: float = 0.25):
    """
    Detections of the trained model on the first val images, tiled into one PNG. FCOS
    scores are class probability x centerness, lower than class probabilities alone: on
    the quickstart model's val detections, 0.25 gives precision 0.90 and recall 0.68 at IoU
    0.5 (0.5 gives 1.00 and 0.22).
    """
    from detectron2.utils.visualizer import Visualizer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(cfg)
    dataset = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    tiles = []
    for record in DatasetCatalog.get(dataset)[:num_images]:
        image = cv2.imread(record["file_name"])
        inst = predictor(image)["instances"].to("cpu")
        inst = inst[inst.scores >= threshold]
        vis = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(inst)
        tile = cv2.resize(vis.get_image()[:, :, ::-1], (320, 320))
        tiles.append(tile)
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + 4]) for i in range(0, len(tiles), 4)]
    cv2.imwrite(out_file, np.vstack(rows))


def main(overrides):
    config = choose_config()
    args = argument_parser().parse_args(["--config-file", config, "--resume", *overrides])
    start = time.time()
    train_net.main(args)  # training, then the evaluation at the end of training
    minutes = (time.time() - start) / 60

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    out_dir = cfg.OUTPUT_DIR
    results = last_eval(os.path.join(out_dir, "metrics.json"))
    picture = os.path.join(out_dir, "detections.png")
    draw_grid(cfg, os.path.join(out_dir, "model_final.pth"), picture)
    print()
    print(f"Quickstart finished in {minutes:.1f} min (training + evaluation).")
    if results:
        print(f"  val AP = {results['bbox/AP']:.1f}, AP50 = {results['bbox/AP50']:.1f}")
    print(f"  checkpoint:  {os.path.join(out_dir, 'model_final.pth')}")
    print(f"  metrics:     {os.path.join(out_dir, 'metrics.json')}")
    pr_curves = os.path.join(out_dir, "inference", PR_CURVES_FILE.format(task="bbox"))
    if os.path.isfile(pr_curves):
        print(f"  PR curves:   {pr_curves}")
    print(f"  detections:  {picture}")


if __name__ == "__main__":
    main(sys.argv[1:])
