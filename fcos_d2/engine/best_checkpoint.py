"""
Keep the checkpoint of the best evaluation (``TEST.BEST_CHECKPOINT_METRIC``).

This is Detectron2's ``hooks.BestCheckpointer`` (same arguments, same triggers: after each
periodic evaluation and after the final one), written here because a long, resumed run
needs three things it lacks, and its behaviour differs between Detectron2 versions:

- ``model_best.pth`` is written without moving the ``last_checkpoint`` tag (Detectron2's
  goes through ``Checkpointer.save``, which tags it, so ``--resume`` would restart from the
  best evaluation's iteration instead of the last checkpoint);
- the metric's name, value and iteration are stored in ``model_best.pth`` and read back
  when training resumes, so a worse evaluation after ``--resume`` does not replace it;
- the first evaluation is always saved (Detectron2 0.6 does so; some later versions only
  remember its value).
"""

import logging
import math
import operator
import os
from typing import Any, Dict, Optional

import torch
from detectron2.engine.train_loop import HookBase

__all__ = ["BestCheckpointer", "read_best_metric"]

logger = logging.getLogger(__name__)

BEST_KEY = "best_metric"


def read_best_metric(path: str) -> Optional[Dict[str, Any]]:
    """``{"name", "value", "iteration"}`` stored in a ``model_best.pth``, or None."""
    if not os.path.isfile(path):
        return None
    data = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    best = data.get(BEST_KEY) if isinstance(data, dict) else None
    return dict(best) if best else None


class BestCheckpointer(HookBase):
    """
    Args:
        eval_period: the period of the EvalHook this hook follows (TEST.EVAL_PERIOD).
        checkpointer: an :class:`~fcos_d2.engine.checkpoint.FCOSCheckpointer` (rank 0's).
        val_metric: the metric's key in the trainer's storage, e.g. "bbox/AP".
        mode: "max" or "min".
        file_prefix: the file's name without ".pth".

    Must be registered after the EvalHook(s) that produce the metric.
    """

    def __init__(
        self,
        eval_period: int,
        checkpointer,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"TEST.BEST_CHECKPOINT_MODE must be 'max' or 'min', got {mode!r}")
        self._logger = logger
        self._period = eval_period
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    @property
    def path(self) -> str:
        return os.path.join(self._checkpointer.save_dir, self._file_prefix + ".pth")

    def before_train(self) -> None:
        # A resumed run continues from the best value found before; a new run starts over.
        if self.trainer.iter <= 0 and getattr(self.trainer, "start_iter", 0) <= 0:
            return
        best = read_best_metric(self.path)
        if best is not None and best.get("name") == self._val_metric:
            self.best_metric, self.best_iter = float(best["value"]), int(best["iteration"])
            self._logger.info(
                f"Resuming with the best {self._val_metric} so far: {self.best_metric:.5f} "
                f"@ iteration {self.best_iter} ({self.path})"
            )

    def after_step(self) -> None:
        # Same conditions as EvalHook: periodic evaluations; the last one is in after_train.
        next_iter = self.trainer.iter + 1
        periodic = self._period > 0 and next_iter % self._period == 0
        if periodic and next_iter != self.trainer.max_iter:
            self._best_checking(self.trainer.iter)

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            # The final evaluation saw the weights of the last iteration, max_iter - 1.
            self._best_checking(self.trainer.max_iter - 1)

    def _best_checking(self, iteration: int) -> None:
        """Compare the latest value of the metric, from the evaluation of the weights after
        training ``iteration``, with the best so far."""
        found = self.trainer.storage.latest().get(self._val_metric)
        if found is None or found[1] < iteration:
            self._logger.warning(
                f"TEST.BEST_CHECKPOINT_METRIC {self._val_metric!r} is not among the evaluation "
                f"results of iteration {iteration} "
                f"({sorted(k for k in self.trainer.storage.latest() if '/' in k)}); "
                "no best checkpoint written"
            )
            return
        value = float(found[0])
        if math.isnan(value) or math.isinf(value):
            self._logger.warning(f"{self._val_metric} is {value}: not a best checkpoint")
            return
        if self.best_metric is not None and not self._compare(value, self.best_metric):
            self._logger.info(
                f"Not saving {self._file_prefix}: {self._val_metric} {value:.5f} @ iteration "
                f"{iteration} is not better than {self.best_metric:.5f} @ iteration "
                f"{self.best_iter}"
            )
            return
        previous = self.best_metric
        self.best_metric, self.best_iter = value, iteration
        best = {"name": self._val_metric, "value": value, "iteration": iteration}
        self._checkpointer.save(
            self._file_prefix, tag_last=False, iteration=iteration, **{BEST_KEY: best}
        )
        before = "" if previous is None else f" (previous best {previous:.5f})"
        self._logger.info(
            f"Saved {self.path}: {self._val_metric} {value:.5f} @ iteration {iteration}{before}"
        )
