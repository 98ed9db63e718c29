"""Sections 4 and 10: assignment + losses (FCOS's, then ATSS's beside it) and their peak
memory for 10..5000 boxes on one 800x1333 image."""

import os
import subprocess
import sys
from typing import Callable, Dict

import torch
from detectron2.structures import Boxes, Instances

from fcos_d2.modeling.losses import fcos_losses
from fcos_d2.reference import fcos_d2_twin

from .common import Context, random_boxes, timeit, timeit_interleaved
from .registry import section

ATSS_OPTS = ("MODEL.FCOS.ASSIGNER_NAME", "ATSSAssigner")


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
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from benchmarks.assignment import assignment_case;"
        "from benchmarks.common import status_mb;"
        "from fcos_d2.reference import seeded_torchvision_fcos, fcos_d2_twin;"
        "m, _ = fcos_d2_twin(seeded_torchvision_fcos(seed=0, num_classes=91), *sys.argv[3:]);"
        "run = assignment_case(m, int(sys.argv[2]));"
        "before = status_mb('VmRSS'); run();"
        "print(json.dumps(status_mb('VmHWM') - before))"
    )
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-c", code, tools, str(n), *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def box_counts(ctx: Context, full, quick) -> list:
    return [10] if ctx.smoke else quick if ctx.quick else full


@section("assign", "4", "assignment + losses at 800x1333", key="assignment")
def run_fcos(ctx: Context) -> Dict[str, dict]:
    """Time (in this process) and peak memory (in a fresh one) of assignment + losses for
    10..5000 boxes at 800x1333."""
    results = {}
    for n in box_counts(ctx, [10, 100, 1000, 5000], [10, 100, 1000]):
        t = timeit(assignment_case(ctx.ours, n), ctx.repeats, warmup=1)
        results[str(n)] = {"seconds": t, "peak_rss_growth_mb": assignment_memory_mb(n)}
        print(
            f"  {n:5d} boxes: {t * 1e3:8.1f} ms, peak RSS growth "
            f"{results[str(n)]['peak_rss_growth_mb']:.0f} MB"
        )
    return results


@section(
    "atss", "10", "ATSS assignment + losses at 800x1333 (beside FCOS's)", key="atss_assignment"
)
def run_atss(ctx: Context) -> Dict[str, dict]:
    """
    ATSS assignment + losses (MODEL.FCOS.ASSIGNER_NAME ATSSAssigner; time in this process,
    interleaved with FCOS's assignment on the same inputs; peak memory in a fresh process)
    for 10..5000 boxes at 800x1333.
    """
    fcos, _ = fcos_d2_twin(ctx.tv)
    atss, _ = fcos_d2_twin(ctx.tv, *ATSS_OPTS)
    results = {}
    for n in box_counts(ctx, [10, 1000, 5000], [10, 1000]):
        times = timeit_interleaved(
            {"atss": assignment_case(atss, n), "fcos": assignment_case(fcos, n)}, ctx.repeats
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
