#!/usr/bin/env python
"""
AP and time of test-time augmentation settings, measured side by side in one process.

    python tools/tta_benchmark.py --config-file configs/quickstart.yaml \\
        --weights output/quickstart/model_final.pth --json tta.json

For every image of the config's first test dataset, each setting runs in turn (the order
rotates from image to image), so that load from other jobs on a shared machine hits all
settings alike; each setting's detections go to its own COCOEvaluator. The settings:
no TTA (the model alone at INPUT.MIN_SIZE_TEST), flip (that size and its flip), flip +
scales (TEST.AUG.MIN_SIZES, each with its flip; NMS merge) and the same with box voting.
The TTA settings read each image at its own size, as ``Trainer.test_with_TTA`` does, so
their AP is the one train_net.py prints with TEST.AUG.ENABLED True.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA  # noqa: E402

import fcos_d2  # noqa: E402
from fcos_d2.data.checks import CheckedDatasetMapper  # noqa: E402
from fcos_d2.engine import FCOSCheckpointer, Trainer  # noqa: E402
from fcos_d2.evaluation import PRCurveCOCOEvaluator  # noqa: E402
from fcos_d2.modeling.tta import FCOSWithTTA  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--num-images", type=int, default=0, help="first N images (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = Trainer.build_model(cfg).eval()
    FCOSCheckpointer(model, strict=True).load(args.weights)

    name = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)
    if args.num_images:
        dicts = dicts[: args.num_images]
    original_cfg = cfg.clone()
    original_cfg.defrost()
    original_cfg.INPUT.MIN_SIZE_TEST = 0  # read at the image's own size, as test_with_TTA
    plain_mapper = CheckedDatasetMapper(cfg, is_train=False)
    original_mapper = CheckedDatasetMapper(original_cfg, is_train=False)
    test_size, max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    sizes, aug_max = list(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE
    settings = {
        "none": (model, plain_mapper),
        "flip": (
            FCOSWithTTA(model, tta_mapper=DatasetMapperTTA([test_size], max_size, True)),
            original_mapper,
        ),
        f"flip + {len(sizes)} scales": (
            FCOSWithTTA(model, tta_mapper=DatasetMapperTTA(sizes, aug_max, True)),
            original_mapper,
        ),
        f"flip + {len(sizes)} scales, voting": (
            FCOSWithTTA(
                model,
                tta_mapper=DatasetMapperTTA(sizes, aug_max, True),
                merge="voting",
                voting_iou=cfg.MODEL.FCOS.TTA_VOTING_IOU,
            ),
            original_mapper,
        ),
    }
    evaluators = {k: PRCurveCOCOEvaluator(name, output_dir=None) for k in settings}
    seconds = {k: 0.0 for k in settings}
    for e in evaluators.values():
        e.reset()
    keys = list(settings)
    with torch.no_grad():
        for i, record in enumerate(dicts):
            for k in keys[i % len(keys) :] + keys[: i % len(keys)]:
                runner, mapper = settings[k]
                inputs = [mapper(record)]
                start = time.perf_counter()
                outputs = runner(inputs)
                seconds[k] += time.perf_counter() - start
                evaluators[k].process(inputs, outputs)
    figures = {}
    image_ids = [r["image_id"] for r in dicts]
    for k in keys:
        bbox = evaluators[k].evaluate(img_ids=image_ids)["bbox"]
        figures[k] = {
            "AP": bbox["AP"],
            "AP50": bbox["AP50"],
            "AP75": bbox["AP75"],
            "s_per_image": seconds[k] / len(dicts),
            "time_ratio": seconds[k] / seconds["none"],
        }
    print(f"\n{len(dicts)} images of {name}, {torch.get_num_threads()} threads")
    print(f"{'setting':<28} {'AP':>6} {'AP50':>6} {'AP75':>6} {'s/image':>8} {'x time':>7}")
    for k, f in figures.items():
        print(
            f"{k:<28} {f['AP']:6.2f} {f['AP50']:6.2f} {f['AP75']:6.2f} "
            f"{f['s_per_image']:8.3f} {f['time_ratio']:7.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "config": args.config_file,
                    "weights": args.weights,
                    "dataset": name,
                    "images": len(dicts),
                    "threads": torch.get_num_threads(),
                    "test_size": test_size,
                    "tta_sizes": sizes,
                    "settings": figures,
                },
                f,
                indent=2,
            )
    return figures


if __name__ == "__main__":
    main()
