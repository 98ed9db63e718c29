"""Shared helpers of the tests: a tiny training configuration and subprocess runners."""

import glob
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")

# configs/quickstart.yaml shrunk to seconds per run: tiny images, batch 2, no workers.
TINY_OPTS = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.BASE_LR",
    "0.01",
    "SOLVER.WARMUP_ITERS",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "192",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "192",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.FCOS.NUM_CONVS",
    "1",
]


# A launcher's variables would make train_net.py join that launcher's process group.
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)


def tiny_env(cache_dir: str, train_images: int = 16, val_images: int = 8) -> Dict[str, str]:
    """
    Environment for a subprocess using small built-in datasets cached in cache_dir, without
    the variables of a launcher (torchrun, SLURM) that may have started the tests.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")
    }
    env.update(
        FCOS_D2_CACHE=str(cache_dir),
        FCOS_D2_SYNTH_TRAIN_IMAGES=str(train_images),
        FCOS_D2_SYNTH_VAL_IMAGES=str(val_images),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def run_train_net(
    args: List[str], env: Dict[str, str], timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run train_net.py with ``args``; its stdout+stderr is in ``.stdout``."""
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train_net.py {args} exited {proc.returncode}:\n{proc.stdout[-5000:]}"
        )
    return proc


def copypaste_aps(log: str) -> List[Dict[str, float]]:
    """Every bbox result table Detectron2 printed in "copypaste" form, in order."""
    found = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "copypaste: Task: bbox" in line and i + 2 < len(lines):
            names = lines[i + 1].split("copypaste: ")[1].split(",")
            values = lines[i + 2].split("copypaste: ")[1].split(",")
            found.append({n: float(v) for n, v in zip(names, values)})
    return found


def copypaste_ap(log: str) -> Optional[Dict[str, float]]:
    """The last bbox result table Detectron2 printed in "copypaste" form."""
    tables = copypaste_aps(log)
    return tables[-1] if tables else None


def builtin_json(cache_dir, split: str) -> str:
    """The COCO json of the built-in ``split`` that a run with ``tiny_env(cache_dir)`` wrote."""
    (path,) = glob.glob(
        os.path.join(str(cache_dir), "datasets", "fcos_synth_v2", f"{split}_n*", f"{split}.json")
    )
    return path


def recomputed_ap(results_json, gt_json: str) -> Dict[str, float]:
    """AP and AP50 (x100) of Detectron2's coco_instances_results.json, recomputed from the
    files with pycocotools (an evaluation independent of the run that printed its own)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        with open(results_json) as f:
            detections = json.load(f)
        assert detections, f"{results_json} holds no detections: nothing to evaluate"
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": 100 * float(ev.stats[0]), "AP50": 100 * float(ev.stats[1])}


def metrics(output_dir: str) -> List[dict]:
    """Records of Detectron2's metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def start_iteration(log: str) -> Optional[int]:
    m = re.findall(r"Starting training from iteration (\d+)", log)
    return int(m[-1]) if m else None


def load_cfg(path: str):
    """A Detectron2 config with the FCOS keys, merged from the yaml at ``path``, on the CPU."""
    from detectron2.config import get_cfg

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def small_fcos_cfg(num_classes: int = 3):
    """A small FCOS on R18 with FrozenBatchNorm (batch-independent) for exactness tests."""
    from detectron2.config import get_cfg

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-FCOS.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    return cfg


def ddp_batch(num_images: int = 4, size=(96, 128)):
    """A deterministic batch of same-size images with a few boxes each."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    h, w = size
    for i in range(num_images):
        n = 1 + i % 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 6
        inst = Instances(
            size,
            gt_boxes=Boxes(torch.cat([xy, xy + wh], 1)),
            gt_classes=torch.randint(0, 3, (n,), generator=g),
        )
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        batch.append({"image": image, "instances": inst})
    return batch


def ddp_loss_worker(out_dir: str) -> None:
    """
    In each worker (or alone): losses and gradients of this worker's share of ddp_batch(),
    with the model wrapped in DistributedDataParallel when there are several workers.
    Writes ``rank<r>.pt`` to out_dir.
    """
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    rank, world = comm.get_rank(), comm.get_world_size()
    torch.manual_seed(0)
    model = build_model(small_fcos_cfg()).train()
    batch = ddp_batch()
    share = len(batch) // world
    mine = batch[rank * share : (rank + 1) * share]
    net = DistributedDataParallel(model) if world > 1 else model
    losses = net(mine)
    sum(losses.values()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    losses = {k: v.detach() for k, v in losses.items()}
    torch.save({"losses": losses, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))


def untrained_weights(path, opts: Optional[List[str]] = None):
    """
    Save (seeded) weights of an untrained model of configs/quickstart.yaml + TINY_OPTS
    (+ ``opts``) to ``path`` (a .pth file) and return the path: for --eval-only runs that
    check plumbing rather than accuracy.
    """
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.engine import FCOSCheckpointer

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS + list(opts or []))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    FCOSCheckpointer(build_model(cfg), save_dir=str(path.parent)).save(path.stem)
    return path


def tiny_cfg(tiny_data: Dict[str, str], out_dir, *opts: str):
    """configs/quickstart.yaml + TINY_OPTS on the ``tiny_data`` fixture's datasets, fp32, 3
    iterations with a checkpoint every 2 and an EMA of decay 0.5 (+ config ``opts``)."""
    from detectron2.config import get_cfg

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            f"('{tiny_data['train']}',)",
            "DATASETS.TEST",
            f"('{tiny_data['val']}',)",
            "MODEL.DEVICE",
            "cpu",
            "OUTPUT_DIR",
            str(out_dir),
            "SOLVER.AMP.ENABLED",
            "False",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.STEPS",
            "()",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "MODEL.EMA.ENABLED",
            "True",
            "MODEL.EMA.DECAY",
            "0.5",
            *opts,
        ]
    )
    return cfg


def evaluate_ground_truth(evaluator, dicts, jitter=None):
    """Run ``evaluator`` on the dataset's own boxes as detections (score 1 - 0.01 i), each
    image's boxes passed through ``jitter`` if given; returns its results."""
    import torch
    from detectron2.structures import Boxes, BoxMode, Instances

    evaluator.reset()
    for d in dicts:
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if jitter is not None:
            boxes = jitter(boxes)
        n = len(boxes)
        inst = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(boxes),
            scores=1 - 0.01 * torch.arange(n, dtype=torch.float32),
            pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]).long(),
        )
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()


def third_party_cfg(path: str):
    """How wrappers of Detectron2 models (e.g. SAHI) load a yaml: no add_fcos_config."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg
