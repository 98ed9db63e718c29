"""End to end on the built-in data: train, checkpoint, evaluate, --eval-only, --resume, predict."""

import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

import fcos_d2
from fcos_d2.predictor import BatchPredictor, Predictor
from helpers import (
    QUICKSTART,
    TINY_OPTS,
    copypaste_ap,
    metrics,
    run_train_net,
    start_iteration,
    tiny_env,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 12-iteration training run with a checkpoint every 6 iterations."""
    base = tmp_path_factory.mktemp("e2e")
    env = tiny_env(base / "cache")
    out = base / "out"
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_ITER",
            "12",
            "SOLVER.STEPS",
            "(8, 10)",
            "SOLVER.CHECKPOINT_PERIOD",
            "6",
            *TINY_OPTS,
        ],
        env,
    )
    return {"env": env, "out": out, "log": proc.stdout}


def test_training_writes_checkpoints_metrics_and_evaluates(trained):
    out, log = trained["out"], trained["log"]
    assert start_iteration(log) == 0
    for name in ("model_0000005.pth", "model_final.pth", "last_checkpoint", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    records = metrics(out)
    iters = [r["iteration"] for r in records if "loss_fcos_cls" in r]
    assert iters[-1] == 11
    assert all(np.isfinite(r["total_loss"]) for r in records if "total_loss" in r)
    ap = copypaste_ap(log)
    assert ap is not None and set(ap) >= {"AP", "AP50", "AP75"}
    final = [r for r in records if "bbox/AP" in r][-1]
    assert final["bbox/AP"] == pytest.approx(ap["AP"], abs=1e-3)
    assert "No GPU found: running on the CPU" in log


def test_eval_only_reproduces_the_final_evaluation(trained):
    out = trained["out"]
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "OUTPUT_DIR",
            str(out / "eval"),
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            *TINY_OPTS,
        ],
        trained["env"],
    )
    ap = copypaste_ap(proc.stdout)
    assert "Evaluation results for bbox" in proc.stdout
    assert ap == pytest.approx(copypaste_ap(trained["log"]), abs=1e-4)


def test_resume_continues_from_the_saved_iteration(trained, tmp_path):
    # Resume from a copy of the run whose last checkpoint is model_0005 (iteration 5).
    out = tmp_path / "resumed"
    out.mkdir()
    os.link(trained["out"] / "model_0000005.pth", out / "model_0000005.pth")
    (out / "last_checkpoint").write_text("model_0000005.pth")
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--resume",
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_ITER",
            "12",
            "SOLVER.STEPS",
            "(8, 10)",
            "SOLVER.CHECKPOINT_PERIOD",
            "6",
            "TEST.EVAL_PERIOD",
            "0",
            *TINY_OPTS,
        ],
        trained["env"],
    )
    assert start_iteration(proc.stdout) == 6
    iters = [r["iteration"] for r in metrics(out) if "loss_fcos_cls" in r]
    assert iters[0] >= 6 and iters[-1] == 11
    # The LR schedule continued: the step at 8 and 10 applied, as in the original run.
    lrs = {r["iteration"]: r["lr"] for r in metrics(out) if "lr" in r}
    orig = {r["iteration"]: r["lr"] for r in metrics(trained["out"]) if "lr" in r}
    for it, lr in lrs.items():
        assert lr == pytest.approx(orig[it])


def _predictor_cfg(trained):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(trained["out"] / "model_final.pth")
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0  # an under-trained model: keep every candidate
    return cfg


def test_default_predictor_returns_boxes_on_a_bgr_image(trained):
    from detectron2.engine import DefaultPredictor

    cfg = _predictor_cfg(trained)
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    out = DefaultPredictor(cfg)(image)["instances"]
    assert 0 < len(out) <= cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = out.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 150).all()
    # Our Predictor gives the same answer and the batched one agrees image by image.
    ours = Predictor(cfg)(image)["instances"]
    torch.testing.assert_close(ours.pred_boxes.tensor, boxes)
    batch = BatchPredictor(cfg, batch_size=2)([image, image[:100]])
    torch.testing.assert_close(batch[0]["instances"].scores, out.scores)
    assert batch[1]["instances"].image_size == (100, 200)


def test_cpu_amp_trains_in_bfloat16(tmp_path):
    # Explicit bf16: it runs on every CPU (emulated, with a warning, where not native).
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "SOLVER.AMP.ENABLED",
            "True",
            "SOLVER.AMP.CPU_PRECISION",
            "bf16",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.STEPS",
            "(2,)",
            "TEST.EVAL_PERIOD",
            "0",
            "DATASETS.TEST",
            "()",
            *TINY_OPTS,
        ],
        tiny_env(tmp_path / "cache"),
    )
    assert "training in bfloat16 autocast (SOLVER.AMP.CPU_PRECISION 'bf16')" in proc.stdout
    from fcos_d2.modeling.precision import cpu_capability

    if not cpu_capability().native_bf16:
        assert "SOLVER.AMP.CPU_PRECISION 'bf16' on a CPU without native bf16" in proc.stdout
    losses = [r for r in metrics(tmp_path / "out") if "loss_fcos_cls" in r]
    assert losses[-1]["iteration"] == 2 and all(np.isfinite(r["total_loss"]) for r in losses)


def test_bf16_autocast_reaches_the_convolutions():
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    c = get_cfg()
    fcos_d2.add_fcos_config(c)
    c.merge_from_file(QUICKSTART)
    c.merge_from_list(TINY_OPTS)
    c.MODEL.DEVICE = "cpu"
    c.SOLVER.AMP.ENABLED = True
    c.SOLVER.AMP.CPU_PRECISION = "bf16"
    c.MODEL.FCOS.INFERENCE_PRECISION = "bf16"
    model = build_model(c)
    seen = []
    model.head.cls_logits.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    # 200x260 pads to 256x384: P7 is 2x3, so GroupNorm sees more than one value per group.
    image = torch.randint(0, 256, (3, 200, 260)).float()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image}])[0]["instances"]
    assert seen[-1] == torch.bfloat16 and out.scores.dtype == torch.float32
    model.train()
    inst = Instances(
        (200, 260),
        gt_boxes=Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0]])),
        gt_classes=torch.tensor([1]),
    )
    losses = model([{"image": image, "instances": inst}])
    assert seen[-1] == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
