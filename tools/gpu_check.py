#!/usr/bin/env python
"""
One command for a CUDA machine: does fcos-d2 train, evaluate, run fast and deploy there?

    bash tools/gpu_check.sh                      # set up .venv, then run this on cuda
    python tools/gpu_check.py --output out/gpu_check
    python tools/gpu_check.py --dry-run          # the same steps at tiny sizes on the CPU

Checks (one row each in the summary):

  train_amp      train_net.py, configs/FCOS_R50_1x.yaml from random init (MODEL.WEIGHTS ""),
                 built-in fcos_synth_train (5 classes), 50 iterations at batch 2 with fp16 AMP:
                 every total_loss in metrics.json finite, and the mean of the last 10 below
                 the mean of the first 10 (metrics.json's total_loss is Detectron2's median
                 over the last 20 iterations).
  eval_devices   train_net.py --eval-only with those weights on 50 built-in val images, on
                 the device and on the CPU: |AP difference| and |AP50 difference| within
                 --ap-tolerance (0.1 AP points). The score threshold is lowered to
                 --score-thresh (0.01): a 50-iteration model scores below the config's 0.05.
  speed_fp32     inference at 800x1333, fcos-d2 against torchvision's fcos_resnet50_fpn
  speed_fp16     (random init both), fp32 and fp16 autocast, interleaved in one run after
                 warm-up, timed between torch.cuda.synchronize() calls: images/s of each and
                 fcos-d2 / torchvision, which must be at least --min-speed-ratio (0.5).
                 fp16 is timed on CUDA only (skipped elsewhere).
  onnx_cuda      tools/export_model.py --format onnx, then the exported model in ONNX Runtime
                 (fcos_d2.deploy.ExportedPredictor: CUDAExecutionProvider when onnxruntime-gpu
                 and a GPU are present) against eager fp32 inference on the inputs of
                 export_model.py --check (fcos_d2.export.compare_with_eager; tolerances
                 1e-2 px, 1e-4 in score). Where this environment's onnxruntime lacks the CUDA
                 provider, onnxruntime-gpu (ONNX Runtime's version) is pip-installed into
                 <output>/onnxruntime-gpu (not into the venv) unless --no-install; where the
                 CUDA provider is still unavailable, the parity runs on the CPU provider and
                 the row says "skipped" with the reason (a parity failure fails it).

Prints one table (check, result, figure, limit), writes it with every figure to
<output>/summary.json and exits 1 when a check failed (2: bad arguments, e.g. --device cuda
on a machine without CUDA). --dry-run runs every step at tiny sizes (configs/quickstart.yaml
shrunk, 6 iterations, 4 val images, 256-px inference, fp32) on --device (default cpu), so that
every code path but the CUDA-specific ones runs anywhere in about a minute.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "train_net.py")

CHECKS = ("train_amp", "eval_devices", "speed_fp32", "speed_fp16", "onnx_cuda")
STEPS = ("train", "eval", "speed", "onnx")
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"

# Variables of a launcher (torchrun, SLURM) would make train_net.py join its process group.
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)


@dataclasses.dataclass
class Row:
    """One check of the summary: ``status`` is "pass", "fail" or "skipped"."""

    check: str
    status: str
    figure: str
    limit: str
    reason: str = ""
    values: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
    """What the steps run: the full check or the --dry-run sizes."""

    config: str
    opts: List[str]
    iters: int
    batch: int
    train_images: int
    val_images: int
    infer_size: Tuple[int, int]
    warmup: int
    rounds: int
    iters_per_round: int
    check_images: int


def full_plan() -> Plan:
    return Plan(
        config=os.path.join(ROOT, "configs", "FCOS_R50_1x.yaml"),
        # LR for batch 2 with a short linear warm-up, so that 50 iterations show progress.
        opts=["SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_ITERS", "10"],
        iters=50,
        batch=2,
        train_images=100,
        val_images=50,
        infer_size=(800, 1333),
        warmup=10,
        rounds=5,
        iters_per_round=10,
        check_images=5,
    )


def dry_plan() -> Plan:
    return Plan(
        config=os.path.join(ROOT, "configs", "quickstart.yaml"),
        # configs/quickstart.yaml shrunk to seconds: tiny images, a thin head, no workers.
        opts=[
            "SOLVER.BASE_LR",
            "0.05",
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
        ],
        iters=6,
        batch=2,
        train_images=12,
        val_images=4,
        infer_size=(256, 256),
        warmup=1,
        rounds=3,
        iters_per_round=1,
        check_images=2,
    )


# ---------------------------------------------------------------------------------------
# Judging: pure functions from figures to rows.


def judge_losses(losses: Sequence[float], precision: str, window: int = 10) -> Row:
    """Finite losses whose mean over the last ``window`` iterations is below the first's
    (``window`` shrinks to half the iterations for short runs)."""
    limit = f"all finite; mean of last {window} < mean of first {window}"
    if not losses:
        return Row("train_amp", FAIL, "no total_loss in metrics.json", limit)
    k = max(1, min(window, len(losses) // 2))
    limit = f"all finite; mean of last {k} < mean of first {k}"
    finite = all(math.isfinite(x) for x in losses)
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    ok = finite and last < first
    figure = f"{precision}, {len(losses)} it: total_loss {first:.3f} -> {last:.3f}"
    if not finite:
        figure += f" ({sum(not math.isfinite(x) for x in losses)} non-finite)"
    values = {"iterations": len(losses), "first_mean": first, "last_mean": last}
    values.update(finite=finite, precision=precision, window=k, total_loss=list(losses))
    return Row("train_amp", PASS if ok else FAIL, figure, limit, values=values)


def judge_ap(
    device_ap: Optional[Dict[str, float]],
    cpu_ap: Optional[Dict[str, float]],
    tolerance: float,
    device: str,
    detections: Tuple[int, int] = (0, 0),
) -> Row:
    """AP and AP50 (COCO, x100) on ``device`` and on the CPU within ``tolerance``."""
    limit = f"|dAP|, |dAP50| <= {tolerance:g}"
    if device_ap is None or cpu_ap is None:
        missing = [n for n, ap in ((device, device_ap), ("cpu", cpu_ap)) if ap is None]
        return Row("eval_devices", FAIL, f"no bbox AP printed on {', '.join(missing)}", limit)
    d_ap = abs(device_ap["AP"] - cpu_ap["AP"])
    d_ap50 = abs(device_ap["AP50"] - cpu_ap["AP50"])
    ok = d_ap <= tolerance and d_ap50 <= tolerance
    figure = (
        f"AP {device} {device_ap['AP']:.3f} / cpu {cpu_ap['AP']:.3f} (d {d_ap:.3f}); "
        f"AP50 d {d_ap50:.3f}; {detections[0]}/{detections[1]} dets"
    )
    values = {"device": device, "device_ap": device_ap, "cpu_ap": cpu_ap, "ap_diff": d_ap}
    values.update(ap50_diff=d_ap50, detections=list(detections), tolerance=tolerance)
    return Row("eval_devices", PASS if ok else FAIL, figure, limit, values=values)


def judge_speed(
    rates: Dict[str, Dict[str, float]], precision: str, min_ratio: float, size: Tuple[int, int]
) -> Row:
    """``rates[precision]`` = {"fcos_d2": img/s, "torchvision": img/s}; the ratio fcos-d2 /
    torchvision must be at least ``min_ratio``. For fp16 the speed-ups over fp32 are
    reported too."""
    mine, theirs = rates[precision]["fcos_d2"], rates[precision]["torchvision"]
    ratio = mine / theirs
    figure = (
        f"{size[0]}x{size[1]}: fcos-d2 {mine:.1f} img/s, torchvision {theirs:.1f}, "
        f"ratio {ratio:.2f}"
    )
    values: Dict[str, Any] = {"size": list(size), "fcos_d2": mine, "torchvision": theirs}
    values["ratio"] = ratio
    if precision != "fp32" and "fp32" in rates:
        up = {m: rates[precision][m] / rates["fp32"][m] for m in ("fcos_d2", "torchvision")}
        figure += f"; vs fp32 x{up['fcos_d2']:.2f} / x{up['torchvision']:.2f}"
        values["speedup_over_fp32"] = up
    status = PASS if ratio >= min_ratio else FAIL
    return Row(f"speed_{precision}", status, figure, f"ratio >= {min_ratio:g}", values=values)


def judge_onnx(result: Dict[str, Any], want_cuda: bool, skip_reason: str = "") -> Row:
    """The ONNX Runtime row of compare_with_eager (``result["report"]``) run on
    ``result["providers"]``: fail on disagreement; else pass when the session ran on the CUDA
    provider, "skipped" (with the reason) when CUDA was not asked for or not available."""
    row = result["report"]["onnxruntime_f32"]
    provider = result["providers"][0] if result["providers"] else "none"
    limit = "counts, classes equal; box <= 1e-2 px, score <= 1e-4"
    figure = (
        f"{provider.replace('ExecutionProvider', '')}: {row['images']} imgs, "
        f"{row['detections']} dets; box {row['max_box_diff']:.1e} px, "
        f"score {row['max_score_diff']:.1e}"
    )
    if row["count_differs"] or row["classes_differ"]:
        figure += f"; count differs {row['count_differs']}, classes {row['classes_differ']}"
    values = {"providers": result["providers"], "onnxruntime": result.get("onnxruntime")}
    values.update(result["report"])
    if not row["agree"]:
        return Row("onnx_cuda", FAIL, figure, limit, values=values)
    if provider == "CUDAExecutionProvider":
        return Row("onnx_cuda", PASS, figure, limit, values=values)
    if not skip_reason:
        skip_reason = (
            "CUDAExecutionProvider not used"
            if not want_cuda
            else f"the session runs on {result['providers']}: CUDAExecutionProvider did not "
            "load (CUDA/cuDNN libraries of onnxruntime-gpu's CUDA version missing?)"
        )
    reason = f"{skip_reason}; parity checked on {provider} instead"
    return Row("onnx_cuda", SKIPPED, figure, limit, reason=reason, values=values)


def format_table(rows: Sequence[Row]) -> str:
    """The summary table: check, result, figure, limit (and the reasons under it)."""
    header = ("check", "result", "figure", "limit")
    cells = [header] + [(r.check, r.status.upper(), r.figure, r.limit) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r.reason:
            lines.append(f"{r.check} {r.status}: {r.reason}")
    return "\n".join(lines)


def finish(rows: Sequence[Row], output: str, meta: Dict[str, Any]) -> int:
    """Print the table, write ``output``/summary.json; 1 if a check failed, else 0."""
    failed = [r.check for r in rows if r.status == FAIL]
    print(format_table(rows))
    print("gpu_check: " + (f"FAILED ({', '.join(failed)})" if failed else "all checks passed"))
    summary = dict(meta, passed=not failed, failed=failed)
    summary["checks"] = [dataclasses.asdict(r) for r in rows]
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------
# Running.


class DeviceError(RuntimeError):
    """The asked-for device cannot be used here (exit status 2)."""


def resolve_device(name: str) -> Any:
    """torch.device(name); DeviceError when it is not a device name, or a CUDA device that
    this machine or this torch build cannot use."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"--device {name!r}: {e}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} asked for, but CUDA is unavailable here "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); "
                "run on a GPU machine, or use --dry-run / --device cpu"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s)")
    return device


def subprocess_env(args: argparse.Namespace, plan: Plan) -> Dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_VARS and not k.startswith("SLURM_")
    }
    env.update(
        FCOS_D2_CACHE=args.cache,
        FCOS_D2_SYNTH_TRAIN_IMAGES=str(plan.train_images),
        FCOS_D2_SYNTH_VAL_IMAGES=str(plan.val_images),
    )
    return env


def run_logged(cmd: List[str], env: Dict[str, str], log: str, timeout: float) -> Tuple[int, str]:
    """Run ``cmd`` with stdout+stderr to the file ``log``; (exit status, output)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"[gpu_check] {' '.join(cmd)}  (log: {log})", flush=True)
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, out = -1, out + f"\n[gpu_check] timed out after {timeout:.0f} s"
    with open(log, "w") as f:
        f.write(out)
    return rc, out


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def copypaste_ap(log: str) -> Optional[Dict[str, float]]:
    """The last bbox table Detectron2 printed in its "copypaste" form."""
    found = None
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "copypaste: Task: bbox" in line and i + 2 < len(lines):
            names = lines[i + 1].split("copypaste: ")[-1].split(",")
            values = lines[i + 2].split("copypaste: ")[-1].split(",")
            found = {n.strip(): float(v) for n, v in zip(names, values)}
    return found


def read_losses(output_dir: str) -> List[float]:
    """total_loss of each iteration in Detectron2's metrics.json, in order."""
    losses: Dict[int, float] = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if "total_loss" in record:
                    losses[record["iteration"]] = float(record["total_loss"])
    return [losses[i] for i in sorted(losses)]


def step_train(args: argparse.Namespace, plan: Plan, device: Any) -> Tuple[Row, Optional[str]]:
    """Train plan.iters iterations from random init; the row and the final weights."""
    out = os.path.join(args.output, "train")
    amp = device.type == "cuda"
    cmd = [sys.executable, TRAIN_NET, "--config-file", plan.config]
    cmd += [*plan.opts, "OUTPUT_DIR", out, "MODEL.DEVICE", str(device), "MODEL.WEIGHTS", ""]
    cmd += [
        "DATASETS.TRAIN",
        "('fcos_synth_train',)",
        "DATASETS.TEST",
        "()",
        "MODEL.FCOS.NUM_CLASSES",
        "5",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
        "False",
        "SOLVER.IMS_PER_BATCH",
        str(plan.batch),
        "SOLVER.MAX_ITER",
        str(plan.iters),
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_METHOD",
        "linear",
        "SOLVER.LOG_PERIOD",
        "1",
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * plan.iters),
        "SOLVER.AMP.ENABLED",
        str(amp),
        "TEST.EVAL_PERIOD",
        "0",
        "SEED",
        "0",
    ]
    rc, log = run_logged(cmd, subprocess_env(args, plan), os.path.join(out, "train.log"), 3600)
    precision = "fp16 AMP" if amp else "fp32"
    weights = os.path.join(out, "model_final.pth")
    if rc != 0 or not os.path.isfile(weights):
        figure = f"train_net.py exited {rc}"
        return Row("train_amp", FAIL, figure, "exit 0", reason=_tail(log)), None
    row = judge_losses(read_losses(out), precision)
    if device.type == "cuda" and "No GPU found" in log:
        row.status, row.reason = FAIL, "train_net.py ran on the CPU, not on the GPU"
    return row, weights


def _eval_cmd(plan: Plan, weights: str, device: str, out: str, score: float) -> List[str]:
    cmd = [sys.executable, TRAIN_NET, "--config-file", plan.config, "--eval-only"]
    cmd += [*plan.opts, "OUTPUT_DIR", out, "MODEL.DEVICE", device, "MODEL.WEIGHTS", weights]
    cmd += ["MODEL.FCOS.NUM_CLASSES", "5", "DATASETS.TEST", "('fcos_synth_val',)"]
    cmd += ["MODEL.FCOS.SCORE_THRESH_TEST", str(score), "DATALOADER.NUM_WORKERS", "0"]
    return cmd


def _count_detections(out: str) -> int:
    path = os.path.join(out, "inference", "coco_instances_results.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return len(json.load(f))


def step_eval(args: argparse.Namespace, plan: Plan, device: Any, weights: str) -> Row:
    """--eval-only with the same weights on ``device`` and on the CPU."""
    env = subprocess_env(args, plan)
    aps: List[Optional[Dict[str, float]]] = []
    counts: List[int] = []
    for i, name in enumerate([str(device), "cpu"]):
        out = os.path.join(args.output, f"eval_{i}_{name.replace(':', '')}")
        cmd = _eval_cmd(plan, weights, name, out, args.score_thresh)
        rc, log = run_logged(cmd, env, os.path.join(out, "eval.log"), 3600)
        if rc != 0:
            figure = f"--eval-only on {name} exited {rc}"
            return Row("eval_devices", FAIL, figure, "exit 0", reason=_tail(log))
        aps.append(copypaste_ap(log))
        counts.append(_count_detections(out))
    return judge_ap(aps[0], aps[1], args.ap_tolerance, str(device), (counts[0], counts[1]))


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    runners: Dict[str, Callable[[], Any]],
    device: Any,
    warmup: int,
    rounds: int,
    iters: int,
) -> Dict[str, float]:
    """Images/s of each runner (one image a call): ``warmup`` calls each, then ``rounds``
    rounds in which each runner (in an order that alternates) runs ``iters`` calls between
    two synchronisations; the median over the rounds."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    _synchronize(device)
    per_round: Dict[str, List[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                runners[name]()
            _synchronize(device)
            per_round[name].append(iters / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in per_round.items()}


def step_speed(args: argparse.Namespace, plan: Plan, device: Any) -> List[Row]:
    """fcos-d2 (configs/FCOS_R50_1x.yaml) and torchvision's fcos_resnet50_fpn, both random
    init, on one plan.infer_size image: fp32 and (on CUDA) fp16 autocast."""
    import torch
    import torchvision
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "FCOS_R50_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = str(device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
        ours = build_model(cfg).eval()
    theirs = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=plan.infer_size[0],
        max_size=plan.infer_size[1],
        score_thresh=cfg.MODEL.FCOS.SCORE_THRESH_TEST,
    )
    theirs = theirs.eval().to(device)
    h, w = plan.infer_size
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device)
    ours_in = [{"image": image.float(), "height": h, "width": w}]
    theirs_in = [image.float() / 255.0]
    precisions = ["fp32"] + (["fp16"] if device.type == "cuda" else [])

    def runner(model: Any, inputs: Any, precision: str) -> Callable[[], Any]:
        def run() -> Any:
            autocast = (
                torch.autocast(device.type, dtype=torch.float16)
                if precision == "fp16"
                else contextlib.nullcontext()
            )
            with torch.no_grad(), autocast:
                return model(inputs)

        return run

    runners = {
        f"{p}/{name}": runner(model, inputs, p)
        for p in precisions
        for name, model, inputs in (("fcos_d2", ours, ours_in), ("torchvision", theirs, theirs_in))
    }
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        measured = time_interleaved(runners, device, plan.warmup, plan.rounds, plan.iters_per_round)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    rates: Dict[str, Dict[str, float]] = {}
    for key, value in measured.items():
        p, name = key.split("/")
        rates.setdefault(p, {})[name] = value
    rows = [judge_speed(rates, p, args.min_speed_ratio, plan.infer_size) for p in precisions]
    if "fp16" not in precisions:
        rows.append(
            Row(
                "speed_fp16",
                SKIPPED,
                "-",
                f"ratio >= {args.min_speed_ratio:g}",
                reason=f"fp16 autocast is timed on CUDA only (device {device})",
            )
        )
    return rows


def _ort_version() -> str:
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return ""


def _ort_has_cuda(pythonpath: Optional[str] = None) -> bool:
    """Whether onnxruntime (from ``pythonpath`` first, if given) lists the CUDA provider; in
    a child process, as an imported onnxruntime cannot be swapped for another."""
    code = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    return proc.returncode == 0 and proc.stdout.strip().endswith("True")


def onnxruntime_gpu_path(args: argparse.Namespace, device: Any) -> Tuple[Optional[str], str]:
    """(folder to put first on PYTHONPATH or None, why the CUDA provider is unavailable or
    "") for the ONNX step: this environment's onnxruntime when it has the CUDA provider, else
    onnxruntime-gpu installed (unless --no-install) into <output>/onnxruntime-gpu."""
    if device.type != "cuda":
        return None, f"device {device}: CUDAExecutionProvider not tried"
    if _ort_has_cuda():
        return None, ""
    target = args.ort_gpu_dir
    if os.path.isdir(target) and _ort_has_cuda(target):
        return target, ""
    if args.no_install:
        return None, "onnxruntime lacks CUDAExecutionProvider and --no-install was given"
    version = _ort_version()
    spec = f"onnxruntime-gpu=={version}" if version else "onnxruntime-gpu"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--upgrade", "--target", target, spec]
    rc, log = run_logged(cmd, dict(os.environ), os.path.join(args.output, "logs", "pip.log"), 1800)
    if rc != 0:
        return None, f"pip install {spec} failed: {_tail(log, 1)}"
    if not _ort_has_cuda(target):
        return None, f"{spec} (in {target}) lists no CUDAExecutionProvider"
    return target, ""


def onnx_parity_worker(spec_path: str) -> int:
    """In a child process (so that the onnxruntime on its PYTHONPATH is the one used):
    tools/export_model.py --format onnx (its main()), then compare_with_eager on the
    exported model with export_model.py --check's inputs; the result as JSON to
    spec["result"]."""
    import torch  # noqa: F401  (first: its CUDA libraries then serve onnxruntime-gpu too)

    with open(spec_path) as f:
        spec = json.load(f)
    import onnxruntime

    # onnxruntime-gpu >= 1.21 can load the CUDA and cuDNN libraries of NVIDIA's pip packages.
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if cuda and hasattr(onnxruntime, "preload_dlls"):
        with contextlib.suppress(Exception):
            onnxruntime.preload_dlls()
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.engine import FCOSCheckpointer
    from fcos_d2.export import compare_with_eager

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import export_model

    print(f"[gpu_check] export_model.py {' '.join(spec['export_argv'])}", flush=True)
    path = export_model.main(spec["export_argv"])
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(spec["config"])
    cfg.merge_from_list(spec["opts"])
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    FCOSCheckpointer(model, strict=True).load(cfg.MODEL.WEIGHTS)
    model.eval()
    session = getattr(ExportedPredictor(path), "_session", None)
    providers = session.get_providers() if session is not None else []
    print(f"[gpu_check] ONNX Runtime {onnxruntime.__version__}, providers {providers}", flush=True)
    inputs = export_model.parity_inputs(cfg, spec["images"])
    report = compare_with_eager(model, path, inputs)
    result = {"model": path, "providers": providers, "onnxruntime": onnxruntime.__version__}
    result["report"] = report
    with open(spec["result"], "w") as f:
        json.dump(result, f, indent=1, default=float)
    return 0


def step_onnx(args: argparse.Namespace, plan: Plan, device: Any, weights: str) -> Row:
    """Export ONNX with tools/export_model.py, then check it in ONNX Runtime (CUDA where
    available) against eager inference, in a child process (see onnx_parity_worker)."""
    out = os.path.join(args.output, "onnx")
    limit = "counts, classes equal; box <= 1e-2 px, score <= 1e-4"
    opts = [*plan.opts, "MODEL.WEIGHTS", weights, "MODEL.FCOS.NUM_CLASSES", "5"]
    opts += ["DATASETS.TEST", "('fcos_synth_val',)"]
    opts += ["MODEL.FCOS.SCORE_THRESH_TEST", str(args.score_thresh)]
    env = subprocess_env(args, plan)
    pythonpath, why = onnxruntime_gpu_path(args, device)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    spec: Dict[str, Any] = {"config": plan.config, "opts": opts, "images": plan.check_images}
    spec["export_argv"] = ["--config-file", plan.config, "--format", "onnx", "--output", out]
    spec["export_argv"] += opts
    spec["result"] = os.path.join(out, "parity.json")
    os.makedirs(out, exist_ok=True)
    spec_path = os.path.join(out, "parity_spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, os.path.abspath(__file__), "--onnx-parity-worker", spec_path]
    rc, log = run_logged(cmd, env, os.path.join(out, "onnx.log"), 1800)
    if rc != 0 or not os.path.isfile(spec["result"]):
        figure = f"export / parity run exited {rc}"
        return Row("onnx_cuda", FAIL, figure, limit, reason=_tail(log))
    with open(spec["result"]) as f:
        result = json.load(f)
    row = judge_onnx(result, device.type == "cuda", why)
    if row.status == SKIPPED and device.type == "cuda":
        row.reason += f" (log: {os.path.join(out, 'onnx.log')})"
    return row


def run_checks(args: argparse.Namespace, plan: Plan, device: Any) -> List[Row]:
    """The steps of ``args.steps``: train, then eval and onnx side by side, then speed; a
    step that raises gives a failed row."""
    rows: Dict[str, Row] = {}

    def guarded(names: Sequence[str], fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (the summary reports it; the others still run)
            for name in names:
                rows[name] = Row(name, FAIL, f"{type(e).__name__}", "-", reason=str(e)[:500])
            return None
        finally:
            took = time.perf_counter() - start
            print(f"[gpu_check] {', '.join(names)}: {took:.1f} s", flush=True)

    weights = args.weights
    if "train" in args.steps:
        result = guarded(["train_amp"], lambda: step_train(args, plan, device))
        if result is not None:
            rows["train_amp"], trained = result
            weights = weights or trained
    # The ONNX step (a child process, mostly on the CPU) runs beside the evaluations; the
    # timing of the speed step runs alone, after both.
    side_steps = [("eval", "eval_devices", step_eval), ("onnx", "onnx_cuda", step_onnx)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for step, check, fn in side_steps:
            if step not in args.steps:
                continue
            if not weights:
                rows[check] = Row(check, FAIL, "no weights", "-", reason="training failed")
                continue
            job = pool.submit(guarded, [check], lambda fn=fn: fn(args, plan, device, weights))
            pending.append((check, job))
        for check, job in pending:
            row = job.result()
            if row is not None:
                rows[check] = row
    if "speed" in args.steps:
        speed = guarded(["speed_fp32", "speed_fp16"], lambda: step_speed(args, plan, device))
        for row in speed or []:
            rows[row.check] = row
    for check in CHECKS:
        if check not in rows:
            rows[check] = Row(
                check, SKIPPED, "-", "-", reason=f"not run (--steps {','.join(args.steps)})"
            )
    return [rows[c] for c in CHECKS]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, fp32, default device cpu")
    p.add_argument("--device", help="torch device (default: cuda; with --dry-run: cpu)")
    p.add_argument("--output", default=os.path.join(ROOT, "output", "gpu_check"), metavar="DIR")
    p.add_argument(
        "--cache", metavar="DIR", help="built-in datasets' cache (default: <output>/cache)"
    )
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated subset of {','.join(STEPS)} (default: all)",
    )
    p.add_argument("--weights", help="weights for eval/onnx instead of the trained ones")
    p.add_argument("--ap-tolerance", type=float, default=0.1, help="AP points (default 0.1)")
    p.add_argument("--min-speed-ratio", type=float, default=0.5, help="fcos-d2/torchvision")
    p.add_argument(
        "--score-thresh",
        type=float,
        default=0.01,
        help="MODEL.FCOS.SCORE_THRESH_TEST of the eval and ONNX steps (default 0.01)",
    )
    p.add_argument("--no-install", action="store_true", help="never pip-install onnxruntime-gpu")
    p.add_argument("--ort-gpu-dir", metavar="DIR", help="(default: <output>/onnxruntime-gpu)")
    p.add_argument("--onnx-parity-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = sorted(set(args.steps) - set(STEPS))
    if bad:
        p.error(f"--steps: unknown {bad}; choose from {list(STEPS)}")
    args.output = os.path.abspath(args.output)
    args.cache = os.path.abspath(args.cache or os.path.join(args.output, "cache"))
    args.ort_gpu_dir = os.path.abspath(
        args.ort_gpu_dir or os.path.join(args.output, "onnxruntime-gpu")
    )
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.onnx_parity_worker:
        return onnx_parity_worker(args.onnx_parity_worker)
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    import torch

    plan = dry_plan() if args.dry_run else full_plan()
    meta: Dict[str, Any] = {
        "device": str(device),
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "config": os.path.relpath(plan.config, ROOT),
        "steps": args.steps,
    }
    print(
        f"[gpu_check] device {device}{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}, "
        f"torch {torch.__version__}, {'dry run' if args.dry_run else 'full check'}, "
        f"output {args.output}",
        flush=True,
    )
    start = time.perf_counter()
    rows = run_checks(args, plan, device)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    return finish(rows, args.output, meta)


if __name__ == "__main__":
    sys.exit(main())
