"""train_net.py with test-time augmentation: --eval-only and training end with both
evaluations, and tools/tta_benchmark.py gives the AP train_net.py prints."""

import json
import os
import subprocess
import sys

import pytest

from helpers import (
    QUICKSTART,
    ROOT,
    TINY_OPTS,
    builtin_json,
    copypaste_aps,
    metrics,
    recomputed_ap,
    run_train_net,
    tiny_env,
    untrained_weights,
)


def test_eval_only_with_tta_prints_both_tables(tmp_path):
    weights = untrained_weights(tmp_path / "untrained.pth")
    out = tmp_path / "out"
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "OUTPUT_DIR",
            str(out),
            "MODEL.WEIGHTS",
            str(weights),
            *TINY_OPTS,
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(96, 128)",
            "TEST.AUG.MAX_SIZE",
            "192",
        ],
        tiny_env(tmp_path / "cache", train_images=1, val_images=3),
    )
    log = proc.stdout
    assert "Running inference with test-time augmentation" in log
    assert log.count("Evaluation results for bbox") == 2, log[-3000:]
    assert log.count("copypaste: Task: bbox") == 2
    # Each evaluation's printed AP is that of its detection file, recomputed independently,
    # and drew its precision-recall curves next to its results.
    gt = builtin_json(tmp_path / "cache", "val")
    for folder, printed in zip(("inference", "inference_TTA"), copypaste_aps(log)):
        recomputed = recomputed_ap(out / folder / "coco_instances_results.json", gt)
        assert abs(printed["AP"] - recomputed["AP"]) < 1e-3, (folder, printed, recomputed)
        assert abs(printed["AP50"] - recomputed["AP50"]) < 1e-3, (folder, printed, recomputed)
        assert os.path.isfile(out / folder / "pr_curves_bbox.png")


def test_training_ends_with_an_evaluation_with_tta(tmp_path):
    out = tmp_path / "out"
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.STEPS",
            "(1,)",
            *TINY_OPTS,
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(128,)",
            "TEST.AUG.MAX_SIZE",
            "192",
            "MODEL.FCOS.TTA_MERGE",
            "voting",
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
        ],
        tiny_env(tmp_path / "cache", train_images=2, val_images=2),
    )
    log = proc.stdout
    assert log.index("Running inference with test-time augmentation") > log.index(
        "Evaluation results for bbox"
    )
    assert log.count("Evaluation results for bbox") == 2
    # Both results reach metrics.json (the TTA evaluation runs before the writers).
    last = [r for r in metrics(out) if "bbox/AP" in r or "bbox_TTA/AP" in r]
    assert {"bbox/AP", "bbox_TTA/AP"} <= set().union(*last)


@pytest.mark.slow  # about 15 s on 2 cores: the tool, then train_net.py
def test_tta_benchmark_tool_runs_every_setting(tmp_path):
    weights = untrained_weights(tmp_path / "untrained.pth")
    out = tmp_path / "tta.json"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "tta_benchmark.py"),
            "--config-file",
            QUICKSTART,
            "--weights",
            str(weights),
            "--num-images",
            "2",
            "--json",
            str(out),
            "--opts",
            *TINY_OPTS,
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
            "TEST.AUG.MIN_SIZES",
            "(96, 128)",
            "TEST.AUG.MAX_SIZE",
            "192",
        ],
        cwd=ROOT,
        env=tiny_env(tmp_path / "cache", train_images=1, val_images=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images"] == 2 and figures["tta_sizes"] == [96, 128]
    settings = figures["settings"]
    assert list(settings) == ["none", "flip", "flip + 2 scales", "flip + 2 scales, voting"]
    assert settings["none"]["time_ratio"] == 1.0
    assert all(s["s_per_image"] > 0 for s in settings.values())
    # "none" and "flip + 2 scales" are the AP train_net.py prints without and with
    # TEST.AUG.ENABLED on the same images (tools/tta_benchmark.py's docstring).
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            "MODEL.WEIGHTS",
            str(weights),
            *TINY_OPTS,
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(96, 128)",
            "TEST.AUG.MAX_SIZE",
            "192",
        ],
        tiny_env(tmp_path / "cache", train_images=1, val_images=2),
    )
    plain, tta = copypaste_aps(proc.stdout)
    assert abs(settings["none"]["AP"] - plain["AP"]) < 1e-3, (settings["none"], plain)
    assert abs(settings["flip + 2 scales"]["AP"] - tta["AP"]) < 1e-3, (settings, tta)
