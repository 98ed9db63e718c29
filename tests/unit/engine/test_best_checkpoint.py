"""TEST.BEST_CHECKPOINT_METRIC: model_best.pth at the best evaluation, kept across --resume."""

import pytest
import torch

from fcos_d2.engine import Trainer
from fcos_d2.engine.best_checkpoint import read_best_metric
from helpers import tiny_cfg


class _ScriptedTrainer(Trainer):
    """Evaluation returns the next AP of ``script`` (no inference)."""

    script: list = []

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return {"bbox": {"AP": cls.script.pop(0)}}


def _train(tiny_data, out, max_iter, aps, resume=False):
    cfg = tiny_cfg(
        tiny_data,
        out,
        "SOLVER.MAX_ITER",
        str(max_iter),
        "TEST.EVAL_PERIOD",
        "2",
        "MODEL.EMA.ENABLED",
        "False",
        "TEST.BEST_CHECKPOINT_METRIC",
        "bbox/AP",
    )
    _ScriptedTrainer.script = list(aps)
    trainer = _ScriptedTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    assert not _ScriptedTrainer.script  # every scripted evaluation ran
    return trainer


def test_best_checkpoint_is_the_best_evaluation(tiny_data, tmp_path):
    # Evaluations after iterations 1, 3 and 5 (the last) give AP 10, 30, 20.
    _train(tiny_data, tmp_path, 6, [10.0, 30.0, 20.0])
    best = read_best_metric(str(tmp_path / "model_best.pth"))
    assert best == {"name": "bbox/AP", "value": 30.0, "iteration": 3}
    saved = torch.load(tmp_path / "model_best.pth", weights_only=False)
    at_3 = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert saved["iteration"] == 3
    for k, v in at_3["model"].items():
        assert torch.equal(saved["model"][k], v), k
    # The best checkpoint does not move the tag that --resume follows.
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_best_checkpoint_survives_resume(tiny_data, tmp_path):
    _train(tiny_data, tmp_path, 4, [10.0, 30.0])  # best: 30 @ 3
    first = torch.load(tmp_path / "model_best.pth", weights_only=False)["model"]
    # Resumed to 6 iterations: the evaluation at 5 (AP 20) is worse and must not replace it.
    _train(tiny_data, tmp_path, 6, [20.0], resume=True)
    assert read_best_metric(str(tmp_path / "model_best.pth"))["iteration"] == 3
    kept = torch.load(tmp_path / "model_best.pth", weights_only=False)["model"]
    assert all(torch.equal(kept[k], v) for k, v in first.items())
    # A better one after resuming replaces it.
    _train(tiny_data, tmp_path, 8, [40.0], resume=True)
    assert read_best_metric(str(tmp_path / "model_best.pth")) == {
        "name": "bbox/AP",
        "value": 40.0,
        "iteration": 7,
    }


def test_missing_metric_is_named(tiny_data, tmp_path, caplog):
    cfg = tiny_cfg(
        tiny_data,
        tmp_path,
        "SOLVER.MAX_ITER",
        "2",
        "MODEL.EMA.ENABLED",
        "False",
        "TEST.BEST_CHECKPOINT_METRIC",
        "bbox/APx",
    )
    _ScriptedTrainer.script = [5.0]
    trainer = _ScriptedTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert not (tmp_path / "model_best.pth").exists()
    assert "'bbox/APx' is not among the evaluation results of iteration 1" in caplog.text
    with pytest.raises(ValueError, match="BEST_CHECKPOINT_MODE"):
        _ScriptedTrainer(
            tiny_cfg(
                tiny_data,
                tmp_path / "b",
                "TEST.BEST_CHECKPOINT_METRIC",
                "bbox/AP",
                "TEST.BEST_CHECKPOINT_MODE",
                "median",
            )
        )


def test_best_checkpoint_by_the_tta_evaluation(tiny_data, tmp_path):
    # TEST.AUG.ENABLED: the final plain evaluation (AP 5), then the one with TTA (AP 7).
    cfg = tiny_cfg(
        tiny_data,
        tmp_path,
        "SOLVER.MAX_ITER",
        "2",
        "MODEL.EMA.ENABLED",
        "False",
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(96,)",
        "TEST.AUG.MAX_SIZE",
        "160",
        "TEST.BEST_CHECKPOINT_METRIC",
        "bbox_TTA/AP",
    )
    _ScriptedTrainer.script = [5.0, 7.0]
    trainer = _ScriptedTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert read_best_metric(str(tmp_path / "model_best.pth")) == {
        "name": "bbox_TTA/AP",
        "value": 7.0,
        "iteration": 1,
    }
