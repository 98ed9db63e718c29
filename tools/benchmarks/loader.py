"""Section 8: the training loader's images/s on COCO-like JPEGs, beside FCOS R-50's training
step on its batches."""

import contextlib
import os
import signal
import statistics
import tempfile
import time
from typing import Dict, List

import torch

from .coco_eval import coco_size_ground_truth
from .common import Context, cpu_config, timeit
from .registry import section


def _write_random_jpegs(folder: str, n: int, seed: int = 0) -> List[str]:
    """``n`` 640x480 photo-sized JPEGs (smooth random colours plus grain, quality 90)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(low, (640, 480), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        img += rng.normal(0, 12, img.shape).astype(np.int16)
        path = os.path.join(folder, f"{i:06d}.jpg")
        cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def loader_section(
    repeats: int, num_images: int = 64, batch: int = 2, opts: tuple = ()
) -> Dict[str, object]:
    """
    Images/s of the training loader (Trainer.build_train_loader: checks, Detectron2's
    DatasetMapper, ResizeShortestEdge to 800 / 1333, flip, batching) on 640x480 JPEGs with
    DATALOADER.NUM_WORKERS 0 and 2, beside the training step of FCOS R-50 (fp32, random
    weights, SGD) on the batches it delivers. ``opts``: more config options.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.structures import BoxMode

    from fcos_d2.engine import Trainer

    out: Dict[str, object] = {"batch": batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = _write_random_jpegs(tmp, num_images)
        out["jpeg_write_s"] = time.perf_counter() - t0
        out["mean_jpeg_kb"] = statistics.mean(os.path.getsize(p) for p in paths) / 1024
        gt = coco_size_ground_truth(num_images, seed=1)
        dicts = []
        for img, path in zip(gt["images"], paths):
            annos = [
                {
                    "bbox": a["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "iscrowd": 0,
                    "category_id": a["category_id"] - 1,
                }
                for a in gt["annotations"]
                if a["image_id"] == img["id"]
            ]
            dicts.append(
                {
                    "file_name": path,
                    "image_id": img["id"],
                    "width": 640,
                    "height": 480,
                    "annotations": annos,
                }
            )
        name = "fcos_d2_benchmark_jpegs"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=[f"class{c}" for c in range(80)])
        cfg = cpu_config(
            "FCOS_R50_1x.yaml",
            *("SOLVER.IMS_PER_BATCH", str(batch), "DATASETS.TRAIN", f"('{name}',)"),
            *opts,
        )
        batches = 1 if repeats == 1 else 4 if repeats <= 3 else 12
        sample = None
        for workers in (0, 2):
            cfg.DATALOADER.NUM_WORKERS = workers
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                it = iter(Trainer.build_train_loader(cfg))
            sample = next(it)  # starts the workers
            next(it)
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            seconds = time.perf_counter() - start
            out[f"loader_workers{workers}_images_per_s"] = batches * batch / seconds
            del it
            print(
                f"  loader, NUM_WORKERS {workers}: "
                f"{out[f'loader_workers{workers}_images_per_s']:.1f} images/s"
            )
        out["input_size"] = list(sample[0]["image"].shape[-2:])
        model = build_model(cfg).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step():
            losses = model(sample)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        step_s = timeit(step, max(2, repeats // 3), warmup=1)
        out["train_step_s"] = step_s
        out["train_images_per_s"] = batch / step_s
        out["loading_share_workers0"] = (batch / out["loader_workers0_images_per_s"]) / step_s
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    print(
        f"  training step, batch {batch} at {out['input_size']}: {step_s:.2f} s "
        f"({out['train_images_per_s']:.2f} images/s); loading in the main process would "
        f"take {100 * out['loading_share_workers0']:.1f}% of it"
    )
    return out


@section(
    "loader",
    "8",
    "training loader on 640x480 JPEGs resized to 800/1333, and the training step",
    key="train_loader",
)
def run(ctx: Context) -> Dict[str, object]:
    """
    The training loader's images/s on 640x480 JPEGs resized to 800/1333 with
    DATALOADER.NUM_WORKERS 0 and 2, beside FCOS R-50's training step on its batches.
    """
    # torch's DataLoader leaves the SIGCHLD handler of its workers installed for the rest of
    # the process. With it, the exit of a later subprocess of this process (section 10's
    # memory probe) crashed it with a segmentation fault after the export section had run
    # (sections export, loader, atss: 4 crashes in 4 runs; none with the handler restored).
    # The workers are gone when the section ends, so the previous handler comes back.
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        if ctx.smoke:
            sizes = ("INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160")
            return loader_section(ctx.repeats, num_images=8, opts=sizes)
        return loader_section(ctx.repeats)
    finally:
        if previous is not None:
            signal.signal(signal.SIGCHLD, previous)
