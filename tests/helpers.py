"""Shared helpers of the tests: a tiny training configuration and subprocess runners."""

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
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "2",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "192",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.FCOS.NUM_CONVS", "1",
]  # fmt: skip


def tiny_env(cache_dir: str, train_images: int = 16, val_images: int = 8) -> Dict[str, str]:
    """Environment for a subprocess using small built-in datasets cached in cache_dir."""
    env = dict(os.environ)
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


def copypaste_ap(log: str) -> Optional[Dict[str, float]]:
    """The last bbox result table Detectron2 printed in "copypaste" form."""
    found = None
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "copypaste: Task: bbox" in line and i + 2 < len(lines):
            names = lines[i + 1].split("copypaste: ")[1].split(",")
            values = lines[i + 2].split("copypaste: ")[1].split(",")
            found = {n: float(v) for n, v in zip(names, values)}
    return found


def metrics(output_dir: str) -> List[dict]:
    """Records of Detectron2's metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def start_iteration(log: str) -> Optional[int]:
    m = re.findall(r"Starting training from iteration (\d+)", log)
    return int(m[-1]) if m else None
