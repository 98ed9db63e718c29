"""Multi-process training on the CPU with the GLOO backend."""

import os

import torch

from fcos_d2.engine import launch
from helpers import (
    QUICKSTART,
    TINY_OPTS,
    builtin_json,
    copypaste_ap,
    ddp_loss_worker,
    metrics,
    recomputed_ap,
    run_train_net,
    tiny_env,
)


def test_two_workers_with_half_batches_equal_one_with_the_full_batch(tmp_path):
    single = tmp_path / "single"
    double = tmp_path / "double"
    single.mkdir()
    double.mkdir()
    ddp_loss_worker(str(single))  # one process, whole batch
    launch(ddp_loss_worker, 2, dist_url="auto", args=(str(double),))
    full = torch.load(single / "rank0.pt")
    parts = [torch.load(double / f"rank{r}.pt") for r in range(2)]
    # Positives are averaged over workers, so the mean of the workers' losses is the
    # full-batch loss, and DDP's averaged gradients are the full-batch gradients.
    for name, value in full["losses"].items():
        mean = (parts[0]["losses"][name] + parts[1]["losses"][name]) / 2
        torch.testing.assert_close(mean, value, rtol=1e-4, atol=1e-6, msg=name)
        assert parts[0]["losses"][name] != parts[1]["losses"][name]  # the halves differ
    assert full["grads"].keys() == parts[0]["grads"].keys()
    for name, grad in full["grads"].items():
        for part in parts:
            torch.testing.assert_close(part["grads"][name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_train_net_with_two_cpu_workers(tmp_path):
    out = tmp_path / "out"
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--num-gpus",
            "2",
            "OUTPUT_DIR",
            str(out),
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.STEPS",
            "(2,)",
            "MODEL.FCOS.SCORE_THRESH_TEST",  # detections to evaluate after 3 iterations
            "0.0",
            *TINY_OPTS[2:],
        ],
        tiny_env(tmp_path / "cache"),
    )
    assert "starting 2 CPU worker(s) with the GLOO backend" in proc.stdout
    assert "World size: 2" in proc.stdout
    assert os.path.isfile(out / "model_final.pth")
    assert [r["iteration"] for r in metrics(out) if "loss_fcos_cls" in r][-1] == 2
    # The distributed evaluation gathered both workers' detections: its AP is that of the
    # whole detection file, recomputed independently.
    printed = copypaste_ap(proc.stdout)
    recomputed = recomputed_ap(
        out / "inference" / "coco_instances_results.json", builtin_json(tmp_path / "cache", "val")
    )
    assert abs(printed["AP"] - recomputed["AP"]) < 1e-3, (printed, recomputed)
