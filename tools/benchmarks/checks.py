"""Section 9: the dataset checks' share of training start-up at COCO-train size."""

import contextlib
import json
import os
import tempfile
import time
from typing import Dict

from .coco_eval import coco_size_ground_truth
from .common import Context, cpu_config
from .registry import section


def dataset_checks_section(num_images: int = 118_000) -> Dict[str, object]:
    """
    Start-up of training on a COCO-train-size dataset (num_images, ~860k boxes for 118k):
    the construction of the Trainer (FCOS R-50 model, optimizer, and the train loader:
    Detectron2's load_coco_json, the dataset checks of fcos_d2/data/checks.py including the
    existence of every image file, the loader itself; hooks), and, timed on their own after
    it, loading the dataset dicts, the checks, and the whole train loader.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
    from detectron2.data.datasets import register_coco_instances

    from fcos_d2.data.checks import sanitize_dataset_dicts
    from fcos_d2.engine import Trainer

    gt = coco_size_ground_truth(num_images, seed=2)
    out: Dict[str, object] = {"images": num_images, "boxes": len(gt["annotations"])}
    name = "fcos_d2_benchmark_coco_size"
    with tempfile.TemporaryDirectory() as tmp:
        images = os.path.join(tmp, "images")
        os.mkdir(images)
        for img in gt["images"]:
            open(os.path.join(images, img["file_name"]), "wb").close()
        json_file = os.path.join(tmp, "train.json")
        with open(json_file, "w") as f:
            json.dump(gt, f)
        out["json_mb"] = os.path.getsize(json_file) / 2**20
        del gt
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, images)
        cfg = cpu_config(
            "FCOS_R50_1x.yaml",
            *("DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"),
            *("DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", os.path.join(tmp, "out")),
        )
        timed: Dict[str, float] = {}
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                start = time.perf_counter()
                Trainer(cfg)
                total = time.perf_counter() - start
                # The parts of the start-up, each on its own (as Trainer.build_train_loader
                # runs them).
                start = time.perf_counter()
                dicts = get_detection_dataset_dicts(
                    [name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
                )
                timed["load_dataset_dicts_s"] = time.perf_counter() - start
                start = time.perf_counter()
                sanitize_dataset_dicts(dicts, cfg.MODEL.FCOS.NUM_CLASSES, name)
                timed["checks_s"] = time.perf_counter() - start
                del dicts
                start = time.perf_counter()
                Trainer.build_train_loader(cfg)
                timed["build_train_loader_s"] = time.perf_counter() - start
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    out.update(timed)
    out["trainer_init_s"] = total
    out["checks_share"] = timed["checks_s"] / total
    print(
        f"  {num_images} images, {out['boxes']} boxes: Trainer(cfg) {total:.1f} s; on their "
        f"own: loading the json into dataset dicts {timed['load_dataset_dicts_s']:.1f} s, "
        f"checks {timed['checks_s']:.1f} s ({100 * out['checks_share']:.0f}% of Trainer(cfg)), "
        f"the whole train loader {timed['build_train_loader_s']:.1f} s"
    )
    return out


@section("checks", "9", "dataset checks in the start-up of training", key="dataset_checks")
def run(ctx: Context) -> Dict[str, object]:
    """The dataset checks' share of training start-up at COCO-train size (--checks-images
    generated images, 118k by default)."""
    return dataset_checks_section(300 if ctx.smoke else ctx.checks_images)
