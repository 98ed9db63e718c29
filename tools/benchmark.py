#!/usr/bin/env python
"""
Side-by-side speed and memory benchmark of fcos-d2 against torchvision's FCOS, in one
process with the same threads and inputs. Not a test: figures depend on the machine.

    python tools/benchmark.py                 # full run
    python tools/benchmark.py --quick         # a few minutes on 2 cores
    python tools/benchmark.py --json out.json # also write the results

Sections:
  1. inference images/s of fcos-d2 and torchvision's fcos_resnet50_fpn (same architecture,
     converted weights, fp32) at 800x1333 and 512x512, their ratio and whether their
     detections agree; fcos-d2 also in bf16 (autocast) and without its speed-ups.
     torchvision places the locations of a level at multiples of (padded size // grid
     size), e.g. 800 // 13 = 61 px for P6 at 800x1333 where the stride is 64, which moves
     its P6/P7 boxes; the twins do the same (MODEL.FCOS.LOCATION_STRIDE of the torchvision
     compat config), and the box difference with the paper's strides is reported beside;
  2. a training iteration (batch 2, 512x512, 10 boxes per image, forward + backward + SGD),
     fp32, and fcos-d2 also with bf16 autocast (SOLVER.AMP.ENABLED on the CPU);
  3. FCOS-specific time (locations + assignment + losses; decoding + NMS) as a share;
  4. assignment + loss time and peak memory for 10..5000 boxes per image at 800x1333;
  5. COCO evaluation time on the built-in val set: pycocotools vs the fastest backend;
  6. AP of bf16 inference against fp32 on the built-in val set (needs a trained model,
     by default the quickstart's output/quickstart/model_final.pth);
  7. COCO evaluation at COCO size (generated: 5000 images, 80 classes, ~36k boxes, 100
     detections per image): pycocotools against the fast backend, same 12 metrics;
  8. the training loader's images/s on 640x480 JPEGs resized to 800/1333 with
     DATALOADER.NUM_WORKERS 0 and 2, beside FCOS R-50's training step on its batches;
  9. the dataset checks' share of training start-up at COCO-train size (118k images).
     (--scale runs only 7-9.)
 10. ATSS assignment + losses (MODEL.FCOS.ASSIGNER_NAME ATSSAssigner) for 10..5000 boxes
     at 800x1333, timed beside FCOS's assignment (section "atss");
 11. FCOS-RT (configs/FCOS_RT_R50_4x.yaml) inference at 512x683 beside FCOS_R50_1x at
     800x1333, fp32, and FCOS-RT without its head BatchNorm folded (section "rt").
Section 1b (section "export"): the whole detector exported (ONNX in ONNX Runtime and
OpenVINO f32/bf16, torch.export) at 800x1333 beside torchvision's eager fp32.
Ratios in the JSON are fcos-d2 speed / torchvision speed (higher is better).
"""

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detectron2.structures import Boxes, Instances  # noqa: E402

from fcos_d2 import compat  # noqa: E402
from fcos_d2.modeling.inference import fcos_inference  # noqa: E402
from fcos_d2.modeling.losses import fcos_losses  # noqa: E402
from fcos_d2.modeling.meta_arch import cat_levels  # noqa: E402
from fcos_d2.modeling.precision import cpu_capability  # noqa: E402
from fcos_d2.reference import fcos_d2_twin, seeded_torchvision_fcos  # noqa: E402

#: What the reduced-precision ("bf16") paths ask for ("auto" or "bf16"; --precision), and
#: what each ran in ("bf16" or "fp32"), recorded in the JSON as "precision_ran".
REDUCED: Dict[str, str] = {"eager": "auto", "export": "auto"}
RAN: Dict[str, str] = {}


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
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def random_boxes(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
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


def inference_section(tv, twins, sizes, repeats) -> Dict[str, dict]:
    results = {}
    for h, w in sizes:
        img = image(h, w)
        tv.transform.min_size = (min(h, w),)
        tv.transform.max_size = max(h, w)
        inputs = [{"image": img, "height": h, "width": w}]
        fns = {"torchvision_fp32": lambda: tv([img / 255.0])}  # noqa: B023
        for name, model in twins.items():
            fns[name] = lambda model=model: model(inputs)  # noqa: B023
        with torch.no_grad():
            row = {name: 1.0 / t for name, t in timeit_interleaved(fns, repeats).items()}
            tv_out = fns["torchvision_fp32"]()
            model, fn = twins["fcos_d2_fp32"], fns["fcos_d2_fp32"]
            # The twins place locations as torchvision does (MODEL.FCOS.LOCATION_STRIDE of
            # the torchvision compat config); the paper's strides for comparison.
            row["agreement"] = detections_agree(tv_out, fn())
            saved = model.postprocessing
            model.postprocessing = saved.replace(location_stride="level")
            try:
                paper = detections_agree(tv_out, fn())
            finally:
                model.postprocessing = saved
            row["agreement"]["max_box_err_with_paper_strides"] = paper["max_box_err"]
        results[f"{h}x{w}"] = row
        print(
            f"  {h}x{w}: "
            + ", ".join(f"{k} {v:.3f} img/s" for k, v in row.items() if isinstance(v, float))
        )
        print(f"    detections agree (torchvision's level strides): {row['agreement']}")
    return results


def training_inputs(n_images=2, size=512, n_boxes=10, num_classes=91):
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


def training_section(tv, ours, repeats, ours_bf16=None) -> Dict[str, float]:
    """
    Seconds per SGD step of torchvision and fcos-d2 in fp32 (and, given ``ours_bf16``,
    fcos-d2 with bf16 autocast as SOLVER.AMP.ENABLED trains on the CPU), interleaved.
    """
    images, targets, inputs = training_inputs()
    tv.transform.min_size = (512,)
    tv.transform.max_size = 512

    def sgd_step(model, run):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

        def step():
            losses = run(model)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        return step

    steps = {
        "torchvision_s": sgd_step(tv, lambda m: m([im / 255.0 for im in images], targets)),
        "fcos_d2_s": sgd_step(ours, lambda m: m(inputs)),
    }
    if ours_bf16 is not None:
        steps["fcos_d2_bf16_s"] = sgd_step(ours_bf16, lambda m: m(inputs))
    times = timeit_interleaved(steps, repeats, warmup=2)
    print("  " + ", ".join(f"{k[:-2]} {v:.3f} s/step" for k, v in times.items()))
    return times


def fcos_share_section(ours, repeats) -> Dict[str, float]:
    """Time of the FCOS-specific parts inside one training step and one inference."""
    _, _, inputs = training_inputs()
    ours.train()
    images = ours.preprocess_image(inputs)
    features = ours.backbone(images.tensor)
    features = [features[f] for f in ours.head_in_features]
    preds = ours.head(features)
    gt = [x["instances"] for x in inputs]
    leaves = [cat_levels(p).detach().requires_grad_() for p in preds]

    def fcos_train_part():
        targets = ours.assigner(
            ours.locations(features, images.tensor.shape[-2:]), ours.strides, gt
        )
        losses = fcos_losses(
            leaves[0],
            leaves[1],
            leaves[2].squeeze(2),
            targets.labels,
            targets.reg_targets,
            **ours.loss_kwargs,
        )
        sum(losses.values()).backward()

    t_train_part = timeit(fcos_train_part, repeats, warmup=1)

    def full_step():
        losses = ours(inputs)
        sum(losses.values()).backward()

    t_step = timeit(full_step, repeats, warmup=1)

    ours.eval()
    h, w = 800, 1333
    inp = [{"image": image(h, w), "height": h, "width": w}]
    with torch.no_grad():
        images = ours.preprocess_image(inp)
        feats = ours.backbone(images.tensor)
        feats = [feats[f] for f in ours.head_in_features]
        logits, box_reg, ctr = ours.head(feats)

        def fcos_infer_part():
            locations = ours.locations(feats, images.tensor.shape[-2:])
            fcos_inference(
                cat_levels(logits),
                cat_levels(box_reg),
                cat_levels(ctr).squeeze(2),
                torch.cat(locations),
                [len(x) for x in locations],
                images.image_sizes,
                ours.postprocessing,
            )

        t_infer_part = timeit(fcos_infer_part, repeats, warmup=1)
        t_infer = timeit(lambda: ours(inp), repeats, warmup=1)
    share = {
        "train_fcos_s": t_train_part,
        "train_step_s": t_step,
        "train_share": t_train_part / t_step,
        "inference_fcos_s": t_infer_part,
        "inference_s": t_infer,
        "inference_share": t_infer_part / t_infer,
    }
    print(
        f"  training: {t_train_part * 1e3:.1f} ms of {t_step * 1e3:.0f} ms "
        f"({100 * share['train_share']:.1f}%); inference 800x1333: "
        f"{t_infer_part * 1e3:.1f} ms of {t_infer * 1e3:.0f} ms "
        f"({100 * share['inference_share']:.1f}%)"
    )
    return share


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def assignment_case(model, n: int) -> Callable[[], None]:
    """
    Assignment + losses + backward for ``n`` random boxes on one 800x1333 image, on
    synthetic head outputs (so that only the FCOS-specific work is measured).
    """
    from fcos_d2.modeling.locations import compute_locations

    strides = model.strides
    shapes = [((800 + s - 1) // s, (1344 + s - 1) // s) for s in strides]
    locations = compute_locations(shapes, strides, model.location_offset)
    num_loc = sum(len(x) for x in locations)
    c = model.num_classes
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(1, num_loc, c, generator=g, requires_grad=True)
    box_reg = (torch.rand(1, num_loc, 4, generator=g) * 100 + 1).requires_grad_()
    ctr = torch.randn(1, num_loc, generator=g, requires_grad=True)
    boxes = random_boxes(n, 800, 1333, seed=n)
    gt = [
        Instances(
            (800, 1333), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, c, (n,), generator=g)
        )
    ]

    def run():
        targets = model.assigner(locations, strides, gt)
        losses = fcos_losses(
            logits, box_reg, ctr, targets.labels, targets.reg_targets, **model.loss_kwargs
        )
        sum(losses.values()).backward()

    return run


def assignment_memory_mb(n: int, *opts: str) -> float:
    """
    Peak resident-memory growth of one :func:`assignment_case` run, measured in a fresh
    process (so that memory freed by earlier work cannot hide it): VmHWM after the run
    minus VmRSS before it. ``opts``: config options of the twin (e.g. another assigner).
    """
    code = (
        "import sys, json, torch; sys.path.insert(0, sys.argv[1]);"
        "import benchmark as b;"
        "from fcos_d2.reference import seeded_torchvision_fcos, fcos_d2_twin;"
        "m, _ = fcos_d2_twin(seeded_torchvision_fcos(seed=0, num_classes=91), *sys.argv[3:]);"
        "run = b.assignment_case(m, int(sys.argv[2]));"
        "before = b._status_mb('VmRSS'); run();"
        "print(json.dumps(b._status_mb('VmHWM') - before))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-c", code, os.path.join(ROOT, "tools"), str(n), *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def assignment_section(ours, box_counts, repeats) -> Dict[str, dict]:
    """Time (in this process) and peak memory (in a fresh one) of assignment + losses."""
    results = {}
    for n in box_counts:
        t = timeit(assignment_case(ours, n), repeats, warmup=1)
        results[str(n)] = {"seconds": t, "peak_rss_growth_mb": assignment_memory_mb(n)}
        print(
            f"  {n:5d} boxes: {t * 1e3:8.1f} ms, peak RSS growth "
            f"{results[str(n)]['peak_rss_growth_mb']:.0f} MB"
        )
    return results


ATSS_OPTS = ("MODEL.FCOS.ASSIGNER_NAME", "ATSSAssigner")


def atss_assignment_section(tv, box_counts, repeats) -> Dict[str, dict]:
    """
    ATSS assignment + losses (time in this process, interleaved with FCOS's assignment on
    the same inputs; peak memory in a fresh process) for each number of boxes at 800x1333.
    """
    fcos, _ = fcos_d2_twin(tv)
    atss, _ = fcos_d2_twin(tv, *ATSS_OPTS)
    results = {}
    for n in box_counts:
        times = timeit_interleaved(
            {"atss": assignment_case(atss, n), "fcos": assignment_case(fcos, n)}, repeats
        )
        row = {
            "seconds": times["atss"],
            "fcos_seconds": times["fcos"],
            "peak_rss_growth_mb": assignment_memory_mb(n, *ATSS_OPTS),
        }
        results[str(n)] = row
        print(
            f"  {n:5d} boxes: ATSS {row['seconds'] * 1e3:8.1f} ms (FCOS {times['fcos'] * 1e3:.1f}"
            f" ms), peak RSS growth {row['peak_rss_growth_mb']:.0f} MB"
        )
    return results


def _config_model(config: str, *opts: str):
    """An untrained (seeded) fcos-d2 model of ``configs/<config>`` on the CPU, in eval mode."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def rt_inference_section(repeats) -> Dict[str, float]:
    """
    images/s of FCOS-RT (configs/FCOS_RT_R50_4x.yaml: P3-P5, BN head folded at inference)
    on a 512x683 image (COCO's 4:3 at its test size) and of FCOS_R50_1x on 800x1333, fp32,
    interleaved; FCOS-RT also with its head BatchNorm left unfolded.
    """
    cases = {
        "fcos_rt_512": (_config_model("FCOS_RT_R50_4x.yaml"), (512, 683)),
        "fcos_rt_512_head_bn_unfolded": (
            _config_model("FCOS_RT_R50_4x.yaml", "MODEL.FCOS.FOLD_FROZEN_BN", "False"),
            (512, 683),
        ),
        "fcos_r50_1x_800": (_config_model("FCOS_R50_1x.yaml"), (800, 1333)),
    }
    fns = {}
    for name, (model, (h, w)) in cases.items():
        inputs = [{"image": image(h, w), "height": h, "width": w}]
        fns[name] = lambda model=model, inputs=inputs: model(inputs)
    with torch.no_grad():
        row = {name: 1.0 / t for name, t in timeit_interleaved(fns, repeats).items()}
    row["rt_speedup"] = row["fcos_rt_512"] / row["fcos_r50_1x_800"]
    row["head_bn_fold_speedup"] = row["fcos_rt_512"] / row["fcos_rt_512_head_bn_unfolded"]
    print(
        "  "
        + ", ".join(
            f"{k} {v:.3f}" + (" img/s" if "speedup" not in k else "x") for k, v in row.items()
        )
    )
    return row


def coco_eval_section() -> Dict[str, object]:
    """pycocotools vs the fastest available COCOeval on fcos_synth_val (identical AP)."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from fcos_d2.data import ensure_builtin_dataset

    json_file = ensure_builtin_dataset("fcos_synth_val")
    gt = COCO(json_file)
    # Detections: ground truth jittered, plus false positives, with random scores.
    rng = np.random.default_rng(0)
    dets = []
    for ann in gt.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):
            jit = rng.normal(0, 0.1, 4) * [w, h, w, h]
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                    "score": float(rng.random()),
                }
            )
    dt = gt.loadRes(dets)
    backends = {"pycocotools": COCOeval}
    fast = compat.fast_cocoeval_class()
    if fast is not None:
        backends[fast.__module__ + "." + fast.__name__] = fast
    out = {}
    for name, cls in backends.items():
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            start = time.perf_counter()
            ev = cls(gt, copy.deepcopy(dt), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
        print(f"  {name}: {seconds:.2f} s, AP {ev.stats[0]:.4f}")
    return out


def _int8_models(cfg, model, folder: str, calibration_dataset: str, n: int, size=None) -> dict:
    """{"openvino_int8": IR, "onnxruntime_int8": QDQ ONNX} of ``model``'s network-only ONNX,
    calibrated on ``n`` images of ``calibration_dataset`` (fcos_d2/quantize.py)."""
    import cv2
    from detectron2.data import DatasetCatalog

    from fcos_d2.export import export_model
    from fcos_d2.quantize import calibration_inputs, quantize_onnxruntime, quantize_openvino

    kwargs = {"sample_size": size} if size else {}
    network = export_model(model, cfg, folder, "onnx", network_only=True, **kwargs)
    dicts = DatasetCatalog.get(calibration_dataset)
    step = max(1, len(dicts) // n)
    images = [cv2.imread(d["file_name"], cv2.IMREAD_COLOR) for d in dicts[::step][:n]]
    calibration = calibration_inputs(network, images)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return {
            "openvino_int8": quantize_openvino(network, calibration, folder),
            "onnxruntime_int8": quantize_onnxruntime(network, calibration, folder),
        }


def _exported_ap(cfg, model, dataset: str) -> Dict[str, float]:
    """AP of the exported model (ONNX) in ONNX Runtime and OpenVINO f32 / bf16, and of its
    INT8 models (calibrated on 300 training images), run by fcos_d2.deploy.ExportedPredictor
    on the dataset's images (resized as Detectron2 does)."""
    import tempfile

    from detectron2.data import DatasetCatalog

    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.export import export_model, exported_ap

    folder = tempfile.mkdtemp(prefix="fcos_d2_bench_ap_")
    path = export_model(model, cfg, folder, "onnx")
    int8 = _int8_models(cfg, model, folder, cfg.DATASETS.TRAIN[0], 300)
    dicts = DatasetCatalog.get(dataset)
    out = {}
    for name, model_path, runtime, precision in [
        ("onnxruntime_fp32", path, "onnxruntime", "f32"),
        ("openvino_fp32", path, "openvino", "f32"),
        ("openvino_bf16", path, "openvino", REDUCED["export"]),
        ("openvino_int8", int8["openvino_int8"], "openvino", "int8"),
        ("onnxruntime_int8", int8["onnxruntime_int8"], "onnxruntime", "int8"),
    ]:
        threads = torch.get_num_threads()
        predictor = ExportedPredictor(model_path, runtime, precision, num_threads=threads)
        RAN[f"ap_exported_{name}"] = predictor.precision
        out[name] = exported_ap(predictor, cfg, dataset, dicts)
    return out


def precision_ap_section(config_file: str, weights: str) -> Dict[str, float]:
    """COCO AP of a trained model on its test set: eager fp32 and bf16 inference, and the
    exported model in ONNX Runtime and OpenVINO (f32, bf16)."""
    from detectron2.config import get_cfg
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    import fcos_d2
    from fcos_d2.engine import FCOSCheckpointer, Trainer

    out = {}
    for precision in ("", REDUCED["eager"]):
        cfg = get_cfg()
        fcos_d2.add_fcos_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.MODEL.FCOS.INFERENCE_PRECISION = precision
        model = build_model(cfg)
        FCOSCheckpointer(model, strict=True).load(weights)
        model.eval()
        if precision:
            RAN["ap_eager_bf16"] = model.inference_precision or "fp32"
        name = cfg.DATASETS.TEST[0]
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            res = inference_on_dataset(
                model,
                Trainer.build_test_loader(cfg, name),
                Trainer.build_evaluator(cfg, name, output_folder="/tmp/fcos_d2_bench_eval"),
            )
        out["bf16" if precision else "fp32"] = res["bbox"]["AP"]
        if precision == "":
            cfg.MODEL.DEVICE = "cpu"
            out.update({f"exported_{k}": v for k, v in _exported_ap(cfg, model, name).items()})
    out["bf16_minus_fp32"] = out["bf16"] - out["fp32"]
    for name in ("openvino_bf16", "openvino_int8", "onnxruntime_int8"):
        out[f"exported_{name}_minus_eager_fp32"] = out[f"exported_{name}"] - out["fp32"]
    out["exported_openvino_bf16_minus_fp32"] = (
        out["exported_openvino_bf16"] - out["exported_openvino_fp32"]
    )
    print("  AP " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
    return out


def export_section(tv, ours, cfg, repeats, threads: int, size=(800, 1333)) -> Dict[str, object]:
    """
    Exported fcos-d2 (ONNX in ONNX Runtime and OpenVINO f32/bf16, torch.export program)
    against torchvision's eager fp32 at 800x1333, post-processing included, timed
    interleaved; and whether the fp32 paths' detections agree with torchvision's.
    """
    import tempfile

    from fcos_d2.deploy import ExportedPredictor
    from fcos_d2.export import export_model

    h, w = size
    img = image(h, w)
    tv.transform.min_size = (min(h, w),)
    tv.transform.max_size = max(h, w)
    folder = tempfile.mkdtemp(prefix="fcos_d2_bench_export_")
    t0 = time.perf_counter()
    onnx_path = export_model(ours, cfg, folder, "onnx", sample_size=(h, w))
    pt2_path = export_model(ours, cfg, folder, "torch_export", sample_size=(h, w))
    export_s = time.perf_counter() - t0
    program = torch.export.load(pt2_path).module()
    runners = {
        "onnxruntime_fp32": ExportedPredictor(onnx_path, "onnxruntime", num_threads=threads),
        "openvino_fp32": ExportedPredictor(onnx_path, "openvino", "f32", num_threads=threads),
        "openvino_bf16": ExportedPredictor(
            onnx_path, "openvino", REDUCED["export"], num_threads=threads
        ),
    }
    RAN["inference_export_openvino_bf16"] = runners["openvino_bf16"].precision
    # INT8 (network-only model + numpy post-processing), calibrated on 16 built-in images
    # resized by the config's test resize: enough for speed (accuracy: section 6).
    t0 = time.perf_counter()
    int8 = _int8_models(cfg, ours, folder, "fcos_synth_val", 16, size=(h, w))
    int8_s = time.perf_counter() - t0
    for name, model_path in int8.items():
        runners[name] = ExportedPredictor(model_path, precision="int8", num_threads=threads)
    x = img.numpy()

    def as_output(boxes, scores, classes) -> List[dict]:
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.as_tensor(boxes)),
            scores=torch.as_tensor(scores),
            pred_classes=torch.as_tensor(classes),
        )
        return [{"instances": inst}]

    def run_pt2():
        b, s_, c, n = program(img, torch.tensor([h, w]))
        n = int(n)
        return as_output(b[:n], s_[:n], c[:n])

    fns = {"torchvision_fp32": lambda: tv([img / 255.0]), "torch_export_fp32": run_pt2}
    for name, predictor in runners.items():
        fns[name] = lambda p=predictor: as_output(*p.run_resized(x, (h, w)).values())
    with torch.no_grad():
        row: Dict[str, object] = {
            name: 1.0 / t for name, t in timeit_interleaved(fns, repeats).items()
        }
        tv_out = fns["torchvision_fp32"]()
        row["agreement"] = {
            name: detections_agree(tv_out, fns[name]())
            for name in ("onnxruntime_fp32", "openvino_fp32", "torch_export_fp32")
        }
    row["export_s"] = export_s
    row["quantize_int8_s"] = int8_s
    print(
        f"  {h}x{w}: "
        + ", ".join(
            f"{k} {v:.3f} img/s"
            for k, v in row.items()
            if isinstance(v, float) and not k.endswith("_s")
        )
    )
    for name, agreement in row["agreement"].items():
        print(f"    {name} detections agree with torchvision: {agreement}")
    return row


# ------------------------------------------------------------------ at scale (7-9)
def coco_size_ground_truth(num_images: int = 5000, num_classes: int = 80, seed: int = 0) -> dict:
    """
    A COCO-format validation set shaped like COCO val2017 (annotations only, no pixels):
    640x480 / 480x640 / 500x375 images, a geometric number of boxes per image (mean
    ~7.3, ~36k boxes for 5000 images, some images empty), box sides log-uniform in
    [4, 500] px (about 43% small, 23% medium, 34% large), aspect ratios in [1/3, 3],
    1% crowd boxes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (500, 375)]
    images, annos = [], []
    for i in range(num_images):
        w, h = sizes[int(rng.integers(len(sizes)))]
        images.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i + 1:012d}.jpg"})
        n = int(rng.geometric(1 / 8.3)) - 1
        side = np.exp(rng.uniform(np.log(4), np.log(500), n))
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
        bw = np.minimum(side * np.sqrt(aspect), w - 1)
        bh = np.minimum(side / np.sqrt(aspect), h - 1)
        x = rng.uniform(0, w - bw)
        y = rng.uniform(0, h - bh)
        cats = rng.integers(1, num_classes + 1, n)
        crowd = rng.random(n) < 0.01
        for k in range(n):
            box = [float(x[k]), float(y[k]), float(bw[k]), float(bh[k])]
            annos.append(
                {
                    "id": len(annos) + 1,
                    "image_id": i + 1,
                    "category_id": int(cats[k]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(crowd[k]),
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annos, "categories": cats}


def coco_size_detections(gt: dict, per_image: int = 100, seed: int = 0) -> List[dict]:
    """
    Detections of a fair detector, ``per_image`` per image as Detectron2's
    TEST.DETECTIONS_PER_IMAGE: 1-2 jittered copies of 80% of the objects (a tenth with
    another class), the rest random boxes; scores higher for better boxes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    num_classes = len(gt["categories"])
    by_image: Dict[int, List[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    dets = []
    for img in gt["images"]:
        w, h = img["width"], img["height"]
        out = []
        for ann in by_image.get(img["id"], []):
            if rng.random() > 0.8:
                continue
            x, y, bw, bh = ann["bbox"]
            for _ in range(int(rng.integers(1, 3))):
                noise = rng.normal(0, 0.15, 4)
                box = [
                    x + noise[0] * bw,
                    y + noise[1] * bh,
                    bw * np.exp(noise[2]),
                    bh * np.exp(noise[3]),
                ]
                cat = ann["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 81))
                score = float(np.clip(1 - np.abs(noise).mean() * 3 + rng.normal(0, 0.1), 0.05, 1))
                out.append((cat, box, score))
        while len(out) < per_image:
            bw, bh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(400), 2)), [w - 1, h - 1])
            box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]
            out.append((int(rng.integers(1, num_classes + 1)), box, float(rng.uniform(0.05, 0.5))))
        out.sort(key=lambda d: -d[2])
        for cat, box, score in out[:per_image]:
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "score": score,
                }
            )
    return dets


def _per_category_ap(ev) -> List[float]:
    """AP per category from COCOeval's precision array, as Detectron2's COCOEvaluator does."""
    import numpy as np

    precision = ev.eval["precision"]  # (iou, recall, class, area, max dets)
    aps = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        aps.append(float(np.mean(p)) * 100 if p.size else float("nan"))
    return aps


def coco_size_eval_section(num_images: int = 5000) -> Dict[str, object]:
    """
    COCOEvaluator's evaluation (loadRes, evaluate, accumulate, summarize: Detectron2's
    _evaluate_predictions_on_coco) of a COCO-size validation set with pycocotools and with
    the fast backend compat.fast_cocoeval_class() finds, in one process; their 12 COCO
    metrics and per-category APs compared.
    """
    import tempfile

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = coco_size_ground_truth(num_images)
    dets = coco_size_detections(gt_dict)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "val.json")
        with open(path, "w") as f:
            json.dump(gt_dict, f)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            gt = COCO(path)
    out: Dict[str, object] = {
        "images": num_images,
        "classes": len(gt_dict["categories"]),
        "boxes": len(gt_dict["annotations"]),
        "detections": len(dets),
    }
    print(f"  {num_images} images, {out['boxes']} boxes, {out['detections']} detections")
    backends = {"pycocotools": COCOeval}
    fast = compat.fast_cocoeval_class()
    if fast is not None:
        backends[fast.__module__.split(".")[0] + "." + fast.__name__] = fast
    evals = {}
    for name, cls in backends.items():
        row = {}
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            t0 = time.perf_counter()
            dt = gt.loadRes(copy.deepcopy(dets))
            t1 = time.perf_counter()
            ev = cls(gt, dt, "bbox")
            ev.evaluate()
            t2 = time.perf_counter()
            ev.accumulate()
            t3 = time.perf_counter()
            ev.summarize()
            t4 = time.perf_counter()
        row = {
            "load_res_s": t1 - t0,
            "evaluate_s": t2 - t1,
            "accumulate_s": t3 - t2,
            "summarize_s": t4 - t3,
            "evaluate_accumulate_s": t3 - t1,
            "stats": [float(v) for v in ev.stats],
        }
        evals[name] = ev
        out[name] = row
        print(
            f"  {name}: evaluate {row['evaluate_s']:.2f} s + accumulate "
            f"{row['accumulate_s']:.2f} s = {row['evaluate_accumulate_s']:.2f} s; "
            f"AP {100 * ev.stats[0]:.2f}"
        )
    if len(evals) == 2:
        (ref, slow), (fast_name, quick) = list(evals.items())
        out["fast_backend"] = fast_name
        out["max_abs_stat_diff"] = float(np.max(np.abs(np.array(slow.stats) - quick.stats)))
        out["max_abs_per_category_ap_diff"] = float(
            np.nanmax(np.abs(np.array(_per_category_ap(slow)) - np.array(_per_category_ap(quick))))
        )
        out["speedup"] = out[ref]["evaluate_accumulate_s"] / out[fast_name]["evaluate_accumulate_s"]
        print(
            f"  {fast_name} / pycocotools: {out['speedup']:.1f}x faster; 12 metrics differ by "
            f"at most {out['max_abs_stat_diff']:.1e}, per-category AP by "
            f"{out['max_abs_per_category_ap_diff']:.1e} (AP points)"
        )
    return out


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


def loader_section(repeats: int, num_images: int = 64, batch: int = 2) -> Dict[str, object]:
    """
    Images/s of the training loader (Trainer.build_train_loader: checks, Detectron2's
    DatasetMapper, ResizeShortestEdge to 800 / 1333, flip, batching) on 640x480 JPEGs with
    DATALOADER.NUM_WORKERS 0 and 2, beside the training step of FCOS R-50 (fp32, random
    weights, SGD) on the batches it delivers.
    """
    import tempfile

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.structures import BoxMode

    import fcos_d2
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
        cfg = get_cfg()
        fcos_d2.add_fcos_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, "configs", "FCOS_R50_1x.yaml"))
        cfg.merge_from_list(
            [
                "MODEL.DEVICE",
                "cpu",
                "MODEL.WEIGHTS",
                "",
                "SOLVER.IMS_PER_BATCH",
                str(batch),
                "DATASETS.TRAIN",
                f"('{name}',)",
            ]
        )
        batches = 4 if repeats <= 3 else 12
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


def dataset_checks_section(num_images: int = 118_000) -> Dict[str, object]:
    """
    Start-up of training on a COCO-train-size dataset (num_images, ~860k boxes for 118k):
    the construction of the Trainer (FCOS R-50 model, optimizer, and the train loader:
    Detectron2's load_coco_json, the dataset checks of fcos_d2/data/checks.py including the
    existence of every image file, the loader itself; hooks), with loading and checks
    timed inside it.
    """
    import tempfile

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    import fcos_d2
    import fcos_d2.engine.trainer as trainer_module
    from fcos_d2.engine import Trainer

    gt = coco_size_ground_truth(num_images, seed=2)
    out: Dict[str, object] = {"images": num_images, "boxes": len(gt["annotations"])}
    timed: Dict[str, float] = {}

    def timing(name, fn):
        def wrapped(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timed[name] = timed.get(name, 0.0) + time.perf_counter() - start

        return wrapped

    name = "fcos_d2_benchmark_coco_size"
    saved = (
        trainer_module.sanitize_dataset_dicts,
        trainer_module.get_detection_dataset_dicts,
        Trainer.__dict__["build_train_loader"],
    )
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
        cfg = get_cfg()
        fcos_d2.add_fcos_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, "configs", "FCOS_R50_1x.yaml"))
        cfg.merge_from_list(
            [
                "MODEL.DEVICE",
                "cpu",
                "MODEL.WEIGHTS",
                "",
                "DATASETS.TRAIN",
                f"('{name}',)",
                "DATASETS.TEST",
                "()",
                "DATALOADER.NUM_WORKERS",
                "0",
                "OUTPUT_DIR",
                os.path.join(tmp, "out"),
            ]
        )
        trainer_module.sanitize_dataset_dicts = timing("checks_s", saved[0])
        trainer_module.get_detection_dataset_dicts = timing("load_dataset_dicts_s", saved[1])
        Trainer.build_train_loader = classmethod(timing("build_train_loader_s", saved[2].__func__))
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                start = time.perf_counter()
                Trainer(cfg)
                total = time.perf_counter() - start
        finally:
            (
                trainer_module.sanitize_dataset_dicts,
                trainer_module.get_detection_dataset_dicts,
                Trainer.build_train_loader,
            ) = saved
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    out.update(timed)
    out["trainer_init_s"] = total
    out["checks_share"] = timed["checks_s"] / total
    print(
        f"  {num_images} images, {out['boxes']} boxes: Trainer(cfg) {total:.1f} s, of which "
        f"loading the json into dataset dicts {timed['load_dataset_dicts_s']:.1f} s, checks "
        f"{timed['checks_s']:.1f} s ({100 * out['checks_share']:.0f}%), the whole train "
        f"loader {timed['build_train_loader_s']:.1f} s"
    )
    return out


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", action="store_true", help="run only sections 7-9 (at scale)")
    p.add_argument(
        "--coco-size-images",
        type=int,
        default=5000,
        help="images of the generated validation set of section 7",
    )
    p.add_argument(
        "--checks-images",
        type=int,
        default=118_000,
        help="images of the generated training set of section 9",
    )


def scale_sections(args: argparse.Namespace, repeats: int) -> Dict[str, object]:
    """Sections 7-9; ``--skip cocosize loader checks`` leaves them out."""
    results: Dict[str, object] = {}
    if "cocosize" not in args.skip:
        print(f"7. COCO evaluation at COCO size ({args.coco_size_images} images, 80 classes)")
        results["coco_size_eval"] = coco_size_eval_section(args.coco_size_images)
    if "loader" not in args.skip:
        print("8. training loader on 640x480 JPEGs resized to 800/1333, and the training step")
        results["train_loader"] = loader_section(repeats)
    if "checks" not in args.skip:
        print(f"9. dataset checks in the start-up of training ({args.checks_images} images)")
        results["dataset_checks"] = dataset_checks_section(args.checks_images)
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and box counts")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="sections to skip: inference export "
        "train share assign coco ap cocosize loader checks atss rt",
    )
    p.add_argument(
        "--weights",
        default=os.path.join(ROOT, "output/quickstart/model_final.pth"),
        help="trained model for the bf16-vs-fp32 AP check (section 6)",
    )
    p.add_argument("--weights-config", default=os.path.join(ROOT, "configs/quickstart.yaml"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16"],
        help="what the 'bf16' paths run in: 'auto' (bf16 where the CPU executes it "
        "natively, else fp32, so that no path is slower than fp32 unasked) or "
        "'bf16' (always; emulated, and slow, on other CPUs). The JSON records "
        "what each path ran in (precision_ran)",
    )
    add_scale_arguments(p)
    args = p.parse_args(argv)
    if args.scale:
        args.skip += ["inference", "export", "train", "share", "assign", "coco", "ap", "atss", "rt"]
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {args.threads} threads, detectron2 {compat.D2_VERSION}")

    tv = seeded_torchvision_fcos(seed=0, num_classes=91).eval()
    ours, ours_cfg = fcos_d2_twin(tv)
    ours.eval()
    plain, _ = fcos_d2_twin(
        tv, "MODEL.FCOS.FOLD_FROZEN_BN", "False", "MODEL.FCOS.CHANNELS_LAST", "False"
    )
    plain.eval()
    REDUCED.update(eager=args.precision, export=args.precision)
    bf16, _ = fcos_d2_twin(tv, "MODEL.FCOS.INFERENCE_PRECISION", args.precision)
    bf16.eval()
    RAN["inference_bf16"] = bf16.inference_precision or "fp32"
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
        "precision_ran": RAN,
    }
    print(f"CPU: {cpu_model_name()}, {cap.describe()}; reduced-precision paths: {args.precision!r}")
    ratios: Dict[str, float] = {}
    if "inference" not in args.skip:
        print("1. inference (images/s)")
        sizes = [(800, 1333), (512, 512)]
        twins = {"fcos_d2_fp32": ours, "fcos_d2_bf16": bf16, "fcos_d2_fp32_plain": plain}
        inf = inference_section(tv, twins, sizes, repeats)
        results["inference"] = inf
        for key, row in inf.items():
            ratios[f"inference_{key}"] = row["fcos_d2_fp32"] / row["torchvision_fp32"]
            ratios[f"inference_{key}_bf16"] = row["fcos_d2_bf16"] / row["torchvision_fp32"]
    if "export" not in args.skip:
        print("1b. exported models (ONNX Runtime, OpenVINO, torch.export) at 800x1333")
        ex = export_section(tv, ours, ours_cfg, repeats, args.threads)
        results["inference_export"] = ex
        tv_speed = ex["torchvision_fp32"]
        fp32 = {
            k: v
            for k, v in ex.items()
            if isinstance(v, float) and k.endswith("_fp32") and k != "torchvision_fp32"
        }
        best = max(fp32, key=fp32.get)
        ratios["inference_800x1333_export_fp32"] = fp32[best] / tv_speed
        ratios["inference_800x1333_export_bf16"] = ex["openvino_bf16"] / tv_speed
        int8 = max(ex["openvino_int8"], ex["onnxruntime_int8"])
        ratios["inference_800x1333_export_int8"] = int8 / tv_speed
        # INT8 against the exported paths it replaces (same run, interleaved).
        results["inference_export"]["int8_vs_export_bf16"] = int8 / ex["openvino_bf16"]
        results["inference_export"]["int8_vs_export_fp32"] = int8 / fp32[best]
        results["inference_export"]["fastest_fp32"] = best
    # Section 3 measures the untrained twin (as section 1), not the one section 2 trains.
    share_model = copy.deepcopy(ours)
    if "train" not in args.skip:
        print("2. training step (batch 2, 512x512, 10 boxes/image)")
        amp, _ = fcos_d2_twin(
            tv, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.CPU_PRECISION", args.precision
        )
        RAN["train_step_bf16"] = amp.train_precision or "fp32"
        tr = training_section(tv, ours, repeats, ours_bf16=amp)
        results["train_step"] = tr
        ratios["train_step"] = tr["torchvision_s"] / tr["fcos_d2_s"]
        ratios["train_step_bf16"] = tr["torchvision_s"] / tr["fcos_d2_bf16_s"]
    if "share" not in args.skip:
        print("3. FCOS-specific share")
        results["fcos_specific"] = fcos_share_section(share_model, repeats)
    if "assign" not in args.skip:
        print("4. assignment + losses at 800x1333")
        counts = [10, 100, 1000] if args.quick else [10, 100, 1000, 5000]
        results["assignment"] = assignment_section(ours, counts, repeats)
    if "coco" not in args.skip:
        print("5. COCO evaluation on fcos_synth_val")
        results["coco_eval"] = coco_eval_section()
    if "ap" not in args.skip:
        print("6. AP of bf16 inference vs fp32 on the built-in val set")
        if os.path.isfile(args.weights):
            results["precision_ap"] = precision_ap_section(args.weights_config, args.weights)
        else:
            print(f"  skipped: no trained model at {args.weights} (run `make demo` first)")
    results.update(scale_sections(args, repeats))
    if "atss" not in args.skip:
        print("10. ATSS assignment + losses at 800x1333 (beside FCOS's)")
        counts = [10, 1000] if args.quick else [10, 1000, 5000]
        results["atss_assignment"] = atss_assignment_section(tv, counts, repeats)
    if "rt" not in args.skip:
        print("11. FCOS-RT inference at 512 beside FCOS_R50_1x at 800x1333 (images/s, fp32)")
        results["fcos_rt_inference"] = rt_inference_section(repeats)
    results["ratios"] = ratios
    print("ratios (fcos-d2 / torchvision speed):", json.dumps(ratios, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
