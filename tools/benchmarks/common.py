"""What the sections of tools/benchmark.py share: the run's settings and models, timing,
inputs, and the comparison of detections with torchvision's."""

import contextlib
import copy
import functools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from fcos_d2.reference import fcos_d2_twin, seeded_torchvision_fcos

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Settings of a run: "full", "quick" (fewer repeats and sizes) or "smoke" (every section at
#: its smallest setting, tiny inputs: checks that the sections run, not figures).
LEVELS = ("full", "quick", "smoke")


@dataclass
class Context:
    """One benchmark run: its settings, the models the sections share (built on first use),
    and what the sections record besides their own results."""

    level: str = "full"
    threads: int = 1
    #: What the reduced-precision ("bf16") paths ask for: "auto" or "bf16" (--precision).
    precision: str = "auto"
    weights: str = os.path.join(ROOT, "output/quickstart/model_final.pth")
    weights_config: str = os.path.join(ROOT, "configs/quickstart.yaml")
    coco_size_images: int = 5000
    checks_images: int = 118_000
    #: What each reduced-precision path ran in ("bf16" or "fp32"): "precision_ran" in the JSON.
    ran: Dict[str, str] = field(default_factory=dict)
    #: fcos-d2 speed / torchvision speed (higher is better): "ratios" in the JSON.
    ratios: Dict[str, float] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.level != "full"

    @property
    def smoke(self) -> bool:
        return self.level == "smoke"

    @property
    def repeats(self) -> int:
        return {"full": 10, "quick": 3, "smoke": 1}[self.level]

    @functools.cached_property
    def tv(self) -> nn.Module:
        """torchvision's fcos_resnet50_fpn, seeded random weights, eval mode."""
        return seeded_torchvision_fcos(seed=0, num_classes=91).eval()

    @functools.cached_property
    def twin(self) -> Tuple[nn.Module, object]:
        """fcos-d2 with :attr:`tv`'s weights (configs/compat/FCOS_R50_torchvision.yaml), eval
        mode, and its config."""
        model, cfg = fcos_d2_twin(self.tv)
        return model.eval(), cfg

    @property
    def ours(self) -> nn.Module:
        return self.twin[0]

    @functools.cached_property
    def plain(self) -> nn.Module:
        """The twin without its speed-ups (no folded FrozenBatchNorm, not channels-last)."""
        model, _ = fcos_d2_twin(
            self.tv, "MODEL.FCOS.FOLD_FROZEN_BN", "False", "MODEL.FCOS.CHANNELS_LAST", "False"
        )
        return model.eval()

    @functools.cached_property
    def bf16(self) -> nn.Module:
        """The twin inferring in the reduced precision asked for (:attr:`precision`)."""
        model, _ = fcos_d2_twin(self.tv, "MODEL.FCOS.INFERENCE_PRECISION", self.precision)
        self.ran["inference_bf16"] = model.inference_precision or "fp32"
        return model.eval()

    def trainable_copies(self) -> Tuple[nn.Module, nn.Module]:
        """Copies of :attr:`tv` and :attr:`ours` that a section may train, leaving those
        untouched for the sections after it."""
        return copy.deepcopy(self.tv), copy.deepcopy(self.ours)


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (as lscpu shows it), or ""."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def status_mb(field_name: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field_name)


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timeit_interleaved(
    fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> Dict[str, float]:
    """
    Median seconds per call of each function, calling them in turn (a, b, c, a, b, c, ...)
    so that drifts in the machine's speed (shared, noisy machines) hit all of them alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A (3, h, w) float image of uniform random 0-255 integers."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def random_boxes(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, 4) XYXY boxes inside an h x w image, sides log-uniform from 5 to ~250 px."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = torch.exp(torch.rand(n, 2, generator=g) * 5.5) + 4
    x1y1 = torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))
    return torch.cat([xy, x1y1], dim=1)


def detections_agree(tv_out: List[dict], our_out: List[dict]) -> Dict[str, float]:
    """Max box/score difference after pairing (same class, nearest box); counts."""
    box_err, score_err, unmatched, total = 0.0, 0.0, 0, 0
    for tv_det, out in zip(tv_out, our_out):
        ours = out["instances"]
        b = tv_det["boxes"]
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # D2 drops empty boxes
        total += int(keep.sum())
        for box, score, label in zip(b[keep], tv_det["scores"][keep], tv_det["labels"][keep]):
            same = (ours.pred_classes == label).nonzero().flatten()
            if len(same) == 0:
                unmatched += 1
                continue
            dist = (ours.pred_boxes.tensor[same] - box).abs().max(dim=1).values
            i = int(dist.argmin())
            box_err = max(box_err, float(dist[i]))
            score_err = max(score_err, float((ours.scores[same[i]] - score).abs()))
        unmatched += abs(len(ours) - int(keep.sum()))
    return {
        "detections": total,
        "unmatched": unmatched,
        "max_box_err": box_err,
        "max_score_err": score_err,
    }


def training_inputs(n_images=2, size=512, n_boxes=10, num_classes=91):
    """Random images with random boxes: torchvision's (images, targets) and fcos-d2's inputs."""
    images, targets, inputs = [], [], []
    for i in range(n_images):
        img = image(size, size, seed=10 + i)
        boxes = random_boxes(n_boxes, size, size, seed=20 + i)
        g = torch.Generator().manual_seed(i)
        labels = torch.randint(1, num_classes, (n_boxes,), generator=g)
        images.append(img)
        targets.append({"boxes": boxes, "labels": labels})
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=labels)
        inputs.append({"image": img, "instances": inst})
    return images, targets, inputs


def cpu_config(config: str, *opts: str):
    """The config of ``configs/<config>`` on the CPU without weights, then ``opts``."""
    from fcos_d2.config import get_fcos_cfg

    path = os.path.join(ROOT, "configs", config)
    return get_fcos_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])


def config_model(config: str, *opts: str):
    """An untrained (seeded) fcos-d2 model of ``configs/<config>`` on the CPU, in eval mode,
    and its config."""
    from detectron2.modeling import build_model

    cfg = cpu_config(config, *opts)
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


@contextlib.contextmanager
def tiny_builtin_dataset(n: int) -> Iterator[Tuple[str, str]]:
    """A smoke run's stand-in for the built-in val set: ``n`` generated built-in images
    (128-160 px, the built-in classes) registered for the duration; yields (name, json)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco

    name = f"fcos_d2_benchmark_tiny_{n}"
    with tempfile.TemporaryDirectory() as folder:
        json_file = generate_synthetic_coco(folder, "val", n, seed=1, min_size=128, max_size=160)
        register_coco_instances(name, {}, json_file, os.path.join(folder, "val"))
        MetadataCatalog.get(name).thing_classes = list(SYNTH_CLASSES)
        try:
            yield name, json_file
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
