"""tools/gpu_check.sh / tools/gpu_check.py: the GPU machine check, as its --dry-run on the CPU
(every step at tiny sizes), and its verdicts on made-up figures."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_check  # noqa: E402

SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``bash tools/gpu_check.sh --no-setup --dry-run --output DIR``: its output and summary."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        ["bash", SCRIPT, "--no-setup", "--dry-run", "--output", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    summary = json.loads((out / "summary.json").read_text())
    return {"proc": proc, "out": out, "summary": summary}


@pytest.mark.slow  # about 60 s on 2 cores (training, two evaluations, an ONNX export)
def test_dry_run_passes_every_check_with_real_figures(dry_run):
    proc, out, summary = dry_run["proc"], dry_run["out"], dry_run["summary"]
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "gpu_check: all checks passed" in proc.stdout
    # The .sh passed its arguments through: a dry run on the CPU into --output.
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert summary["passed"] is True and summary["failed"] == []
    checks = {c["check"]: c for c in summary["checks"]}
    assert list(checks) == list(gpu_check.CHECKS)
    table = proc.stdout[proc.stdout.index("check  ") :]
    for name, row in checks.items():
        assert f"{name} " in table and row["status"].upper() in table

    train = checks["train_amp"]
    assert train["status"] == "pass"
    losses = train["values"]["total_loss"]
    assert len(losses) == 6 and all(math.isfinite(x) and x > 0 for x in losses)
    assert train["values"]["last_mean"] < train["values"]["first_mean"]
    assert (out / "train" / "model_final.pth").is_file()

    # The same weights evaluated twice on the CPU ("device" and CPU): the same AP, and the
    # same (non-zero) number of detections.
    ev = checks["eval_devices"]
    assert ev["status"] == "pass"
    assert set(ev["values"]["device_ap"]) >= {"AP", "AP50", "AP75"}
    assert ev["values"]["device_ap"] == ev["values"]["cpu_ap"]
    n_device, n_cpu = ev["values"]["detections"]
    assert n_device == n_cpu > 0

    fp32 = checks["speed_fp32"]
    assert fp32["status"] == "pass"
    v = fp32["values"]
    assert v["size"] == [256, 256] and v["fcos_d2"] > 0 and v["torchvision"] > 0
    assert v["ratio"] == pytest.approx(v["fcos_d2"] / v["torchvision"])
    assert checks["speed_fp16"]["status"] == "skipped"
    assert "CUDA only" in checks["speed_fp16"]["reason"]

    # No CUDA provider on the CPU: skipped, with the parity itself run on the CPU provider.
    onnx = checks["onnx_cuda"]
    assert onnx["status"] == "skipped" and "CUDAExecutionProvider" in onnx["reason"]
    assert onnx["values"]["providers"][0] == "CPUExecutionProvider"
    ort = onnx["values"]["onnxruntime_f32"]
    assert ort["agree"] and ort["images"] == 2 + 3 and ort["detections"] > 0
    assert (out / "onnx" / "model.onnx").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: this would run it")
def test_cuda_asked_for_without_cuda_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        ["bash", SCRIPT, "--no-setup", "--device", "cuda", "--output", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--device cuda asked for, but CUDA is unavailable" in proc.stdout
    assert not (tmp_path / "summary.json").exists()


def test_a_failed_check_exits_non_zero(tmp_path, capsys):
    # --eval-only on weights that do not exist: train_net.py refuses, the check fails.
    missing = str(tmp_path / "missing.pth")
    argv = ["--dry-run", "--steps", "eval", "--weights", missing, "--output", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = {c["check"]: c for c in summary["checks"]}
    assert summary["passed"] is False and summary["failed"] == ["eval_devices"]
    assert checks["eval_devices"]["figure"] == "--eval-only on cpu exited 2"
    assert "MODEL.WEIGHTS not found" in checks["eval_devices"]["reason"]
    assert checks["train_amp"]["status"] == "skipped"  # not among --steps
    assert "gpu_check: FAILED (eval_devices)" in capsys.readouterr().out


def test_verdicts_on_made_up_figures(tmp_path, capsys):
    assert gpu_check.judge_losses([3.0, 2.9, 2.5, 2.4], "fp16 AMP").status == "pass"
    assert gpu_check.judge_losses([2.0, 2.1, 2.3, 2.4], "fp16 AMP").status == "fail"
    assert gpu_check.judge_losses([3.0, 2.0, float("nan"), 1.0], "fp16 AMP").status == "fail"
    assert gpu_check.judge_losses([], "fp32").status == "fail"
    ap = {"AP": 10.0, "AP50": 20.0}
    near = {"AP": 10.05, "AP50": 20.08}
    assert gpu_check.judge_ap(ap, near, 0.1, "cuda").status == "pass"
    assert gpu_check.judge_ap(ap, {"AP": 10.0, "AP50": 20.2}, 0.1, "cuda").status == "fail"
    assert gpu_check.judge_ap(ap, ap, -1, "cuda").status == "fail"  # --ap-tolerance -1
    assert gpu_check.judge_ap(ap, None, 0.1, "cuda").status == "fail"
    report = {
        "images": 5,
        "detections": 40,
        "count_differs": 0,
        "classes_differ": 0,
        "max_box_diff": 1e-3,
        "max_score_diff": 1e-6,
        "agree": True,
    }
    cuda = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert gpu_check.judge_onnx({**cuda, "report": {"onnxruntime_f32": report}}, True).status == (
        "pass"
    )
    fell_back = gpu_check.judge_onnx(
        {"providers": ["CPUExecutionProvider"], "report": {"onnxruntime_f32": report}}, True
    )
    assert fell_back.status == "skipped" and "did not load" in fell_back.reason
    bad = dict(report, count_differs=1, agree=False)
    assert gpu_check.judge_onnx({**cuda, "report": {"onnxruntime_f32": bad}}, True).status == (
        "fail"
    )

    rows = [gpu_check.judge_ap(ap, near, 0.1, "cuda"), fell_back]
    assert gpu_check.finish(rows, str(tmp_path), {"device": "cuda"}) == 0
    rows.append(gpu_check.judge_ap(ap, ap, -1, "cuda"))
    assert gpu_check.finish(rows, str(tmp_path), {"device": "cuda"}) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == ["eval_devices"]
    printed = capsys.readouterr().out
    assert "eval_devices  FAIL" in printed and "onnx_cuda skipped:" in printed
