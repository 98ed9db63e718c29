"""
Exponential moving average (EMA) of a model's weights, as d2go's and detrex's MODEL_EMA.

After every optimizer step (``MODEL.EMA.ENABLED``), :meth:`ModelEMA.update` sets, for every
entry of the model's state dict,

    e <- decay * e + (1 - decay) * w      (parameters and floating-point buffers)
    e <- w                                 (integer buffers, e.g. BatchNorm's counters)

starting from the weights training starts with. With a warm-up factor W >= 0 (d2go's
``DECAY_WARM_UP_FACTOR``), update n (counted from 1) uses min(decay, (1 + n) / (W + n))
instead of ``decay``. Every worker updates its own copy from
its own (DDP-synchronised) parameters, so the averages agree across workers wherever the
weights do. :meth:`ModelEMA.swapped` puts the averages into the model for a while (for
evaluation and for writing checkpoints) and the training weights back afterwards.

In a checkpoint written by :class:`~fcos_d2.engine.checkpoint.FCOSCheckpointer` with an
EMA, ``"model"`` holds the averaged weights (what evaluation, ``DefaultPredictor`` and
export load) and ``"ema"`` the training weights and the update count
(:meth:`ModelEMA.state_dict`), so that ``--resume`` continues bit for bit.
"""

import contextlib
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """
    The EMA of ``model``'s state dict.

    Args:
        model: the trained model (or a DistributedDataParallel around it).
        decay: weight of the previous average, in [0, 1).
        warm_up_factor: W of the decay's warm-up (see the module doc); negative: none.
    """

    def __init__(self, model: nn.Module, decay: float, warm_up_factor: float = -1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL.EMA.DECAY must be in [0, 1), got {decay}")
        self.model = _unwrap(model)
        self.decay = float(decay)
        self.warm_up_factor = float(warm_up_factor)
        self.num_updates = 0
        self.num_loads = 0  # how many checkpoints restored this EMA
        self.averages: Dict[str, Tensor] = {}
        self.reset()

    def _state(self) -> Dict[str, Tensor]:
        # keep_vars: the tensors themselves (no detach), so that copy_ writes into them.
        return self.model.state_dict(keep_vars=True)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the averages from the model's current weights."""
        self.averages = {k: v.detach().clone() for k, v in self._state().items()}
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay of the next update (``decay``, or less during the warm-up)."""
        if self.warm_up_factor < 0:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1.0 + n) / (self.warm_up_factor + n))

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the model's current weights (call after the optimizer step)."""
        decay = self.current_decay()
        for name, value in self._state().items():
            average = self.averages[name]
            if average.is_floating_point():
                average.mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                average.copy_(value)
        self.num_updates += 1

    @torch.no_grad()
    def _exchange(self) -> None:
        for name, value in self._state().items():
            held = self.averages[name]
            tmp = value.detach().clone()
            value.copy_(held)  # in place, as a version bump: caches of folded weights see it
            held.copy_(tmp)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """While inside, the model holds the averaged weights (and this object the training
        weights); on leaving, even by an exception, they are exchanged back."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    def state_dict(self) -> Dict[str, Any]:
        """The update count, decay and the weights this object holds now. Inside
        :meth:`swapped` (where checkpoints are written) those are the training weights."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "held_weights": {k: v.clone() for k, v in self.averages.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """
        Restore from a checkpoint's ``"ema"`` entry. The checkpointer has loaded the
        checkpoint's ``"model"`` (the averages) into the model just before: they move here,
        and the training weights from ``state`` go into the model.
        """
        held: Optional[Dict[str, Tensor]] = state.get("held_weights")
        if held is None or set(held) != set(self.averages):
            raise KeyError("the checkpoint's 'ema' entry does not fit this model")
        self.averages = {k: v.detach().clone() for k, v in self._state().items()}
        for name, value in self._state().items():
            value.copy_(held[name])
        self.num_updates = int(state["num_updates"])
        self.num_loads += 1
