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


def verify_images_section(num_images: int = 20_000, size=(480, 640)) -> Dict[str, object]:
    """
    ``DATALOADER.VERIFY_IMAGES``: fcos_d2.data.verify.verify_images (every image decoded, in
    threads) on ``num_images`` generated JPEGs of ``size`` (H, W), quality 90, in the page
    cache: wall time, images/s and CPU time per image of this process.
    """
    import cv2
    import numpy as np

    from fcos_d2.data.verify import verify_images

    h, w = size
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        dicts, total_bytes = [], 0
        for i in range(num_images):
            path = os.path.join(tmp, f"{i:06d}.jpg")
            cv2.imwrite(path, np.roll(base, i, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 90])
            total_bytes += os.path.getsize(path)
            dicts.append({"file_name": path, "width": w, "height": h})
        verify_images(dicts[:50])  # warm-up: thread pool, Pillow's decoder
        cpu, start = time.process_time(), time.perf_counter()
        bad = verify_images(dicts)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert not bad, bad[:3]
    out = {
        "images": num_images,
        "size": f"{w}x{h}",
        "mean_kb": total_bytes / num_images / 1024,
        "threads": min(16, os.cpu_count() or 1),
        "seconds": wall,
        "images_per_s": num_images / wall,
        "cpu_ms_per_image": 1000 * cpu / num_images,
    }
    print(
        f"  {num_images} JPEGs of {w}x{h} ({out['mean_kb']:.0f} KB) verified in {wall:.1f} s: "
        f"{out['images_per_s']:.0f} images/s, {out['cpu_ms_per_image']:.2f} ms CPU per image "
        f"({out['threads']} threads)"
    )
    return out


@section("verify", "9b", "images verified before training (VERIFY_IMAGES)", key="verify_images")
def run_verify(ctx: Context) -> Dict[str, object]:
    """verify_images on 20,000 generated JPEGs (2,000 with --quick, 20 with --smoke)."""
    return verify_images_section(20 if ctx.smoke else 2_000 if ctx.quick else 20_000)
