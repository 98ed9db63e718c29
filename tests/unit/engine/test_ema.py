"""EMA of the weights: the update rule by hand, save/resume bit for bit, used for evaluation."""

import pytest
import torch
from detectron2.engine import HookBase
from torch import nn

from fcos_d2.engine import FCOSCheckpointer, Trainer
from fcos_d2.engine.ema import ModelEMA
from helpers import tiny_cfg


def test_ema_update_is_the_hand_computed_average():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    weights = [torch.full((2, 2), float(v)) for v in (1.0, 3.0, -2.0, 5.0)]
    with torch.no_grad():
        net[0].weight.copy_(weights[0])
    ema = ModelEMA(net, decay=0.9)
    expected = weights[0].clone()
    for w in weights[1:]:
        with torch.no_grad():
            net[0].weight.copy_(w)
            net[1].num_batches_tracked += 7
        ema.update()
        expected = 0.9 * expected + 0.1 * w
    # 0.9 * (0.9 * (0.9 * 1 + 0.1 * 3) + 0.1 * -2) + 0.1 * 5 = 1.292
    assert expected[0, 0].item() == pytest.approx(1.292)
    torch.testing.assert_close(ema.averages["0.weight"], expected)
    assert ema.averages["1.num_batches_tracked"].item() == 21  # integers copied, not averaged
    assert ema.num_updates == 3


def test_decay_warm_up_is_the_hand_computed_average():
    # d2go's warm-up with W = 2: update n uses min(0.9, (1 + n) / (2 + n)) = 2/3, 3/4, 4/5.
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = ModelEMA(net, decay=0.9, warm_up_factor=2)
    for w in (3.0, -2.0, 5.0):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update()
    # 4/5 * (3/4 * (2/3 * 1 + 1/3 * 3) + 1/4 * -2) + 1/5 * 5 = 1.6
    assert ema.averages["weight"].item() == pytest.approx(1.6)
    # Past the warm-up, the decay itself: (1 + n) / (2 + n) > 0.9 from n = 9 on.
    ema.num_updates = 8
    assert ema.current_decay() == 0.9
    assert ModelEMA(net, decay=0.9).current_decay() == 0.9  # no warm-up by default


def test_swapped_exchanges_and_restores_even_on_error():
    net = nn.Linear(2, 1)
    ema = ModelEMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()
    trained, averaged = net.weight.detach().clone(), ema.averages["weight"].clone()
    with pytest.raises(RuntimeError), ema.swapped():
        torch.testing.assert_close(net.weight.detach(), averaged)
        raise RuntimeError
    torch.testing.assert_close(net.weight.detach(), trained)
    torch.testing.assert_close(ema.averages["weight"], averaged)
    with pytest.raises(ValueError, match="MODEL.EMA.DECAY"):
        ModelEMA(net, decay=1.0)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _SpyTrainer(Trainer):
    """A Trainer whose evaluation records the weights it is given."""

    evaluated: list = []

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        cls.evaluated.append(_state(model))
        return {}


class _Recorder(HookBase):
    def __init__(self, seen):
        self.seen = seen

    def after_step(self):
        self.seen.append(_state(self.trainer.model))


def test_trainer_ema_over_three_steps_checkpoint_resume_and_evaluation(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "a", "TEST.EVAL_PERIOD", "0")
    trainer = _SpyTrainer(cfg)
    _SpyTrainer.evaluated = evaluated = []
    trainer.resume_or_load(resume=False)
    model = trainer.model
    seen = [_state(model)]  # the weights training starts from, then after each step
    trainer.register_hooks([_Recorder(seen)])
    trainer.train()
    # Hand-computed EMA: e0 = w0, e_t = 0.5 e_{t-1} + 0.5 w_t (floats; integers copied).
    expected = seen[0]
    for w in seen[1:]:
        expected = {
            k: 0.5 * expected[k] + 0.5 * w[k] if w[k].is_floating_point() else w[k] for k in w
        }
    assert len(seen) == 4 and trainer.ema.num_updates == 3
    for k, v in expected.items():
        torch.testing.assert_close(trainer.ema.averages[k], v, rtol=1e-6, atol=1e-7)
    # The final evaluation saw the EMA weights, and training weights came back after it.
    (ev,) = evaluated
    for k in expected:
        torch.testing.assert_close(ev[k], expected[k], rtol=1e-6, atol=1e-7)
    for k, v in _state(model).items():
        assert torch.equal(v, seen[-1][k])
    # model_final.pth holds the EMA weights as "model", the training weights under "ema".
    final = torch.load(tmp_path / "a" / "model_final.pth", weights_only=False)
    for k in expected:
        assert torch.equal(final["model"][k], trainer.ema.averages[k])
        assert torch.equal(final["ema"]["held_weights"][k], seen[-1][k])


class _Interrupted(Exception):
    pass


class _StopAfter(HookBase):
    """Ends training after iteration ``n`` (after its checkpoint), as a killed job."""

    def __init__(self, n):
        self.n = n

    def after_step(self):
        if self.trainer.iter == self.n:
            raise _Interrupted


def test_resume_restores_training_and_ema_weights_bit_for_bit(tiny_data, tmp_path):
    # One training image, no flip: every batch is the same, so a resumed run can be compared
    # with an uninterrupted one although its loader starts its order anew.
    one = (
        "DATASETS.TRAIN",
        f"('{tiny_data['one']}',)",
        "INPUT.RANDOM_FLIP",
        "none",
        "DATASETS.TEST",
        "()",
    )
    # Uninterrupted: 4 iterations. Interrupted after iteration 1 (its checkpoint written),
    # then --resume to 4.
    torch.manual_seed(0)
    full = Trainer(tiny_cfg(tiny_data, tmp_path / "full", "SOLVER.MAX_ITER", "4", *one))
    full.resume_or_load(resume=False)
    full.train()
    torch.manual_seed(0)  # the same initial weights
    part = Trainer(tiny_cfg(tiny_data, tmp_path / "part", "SOLVER.MAX_ITER", "4", *one))
    part.resume_or_load(resume=False)
    part.register_hooks([_StopAfter(1)])
    with pytest.raises(_Interrupted):
        part.train()
    checkpoint = torch.load(tmp_path / "part" / "model_0000001.pth", weights_only=False)
    resumed = Trainer(tiny_cfg(tiny_data, tmp_path / "part", "SOLVER.MAX_ITER", "4", *one))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.ema.num_updates == 2
    for k, v in checkpoint["ema"]["held_weights"].items():  # training weights back in place
        assert torch.equal(resumed.model.state_dict()[k], v)
    for k, v in checkpoint["model"].items():  # and the averages in the EMA
        assert torch.equal(resumed.ema.averages[k], v)
    resumed.train()
    for k, v in full.ema.averages.items():
        assert torch.equal(resumed.ema.averages[k], v), k
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    # Resumed with the EMA switched off: the training weights again, not the averages.
    (tmp_path / "part" / "last_checkpoint").write_text("model_0000001.pth")
    off = tiny_cfg(tiny_data, tmp_path / "part", "SOLVER.MAX_ITER", "4", *one)
    off.MODEL.EMA.ENABLED = False
    plain = Trainer(off)
    plain.resume_or_load(resume=True)
    assert plain.ema is None and plain.start_iter == 2
    for k, v in checkpoint["ema"]["held_weights"].items():
        assert torch.equal(plain.model.state_dict()[k], v), k


def test_eval_only_loads_the_ema_weights(tiny_data, tmp_path):
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path, "TEST.EVAL_PERIOD", "0"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    cfg = tiny_cfg(tiny_data, tmp_path / "eval")
    model = Trainer.build_model(cfg)
    FCOSCheckpointer(model, strict=True).load(str(tmp_path / "model_final.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer.ema.averages[k])
