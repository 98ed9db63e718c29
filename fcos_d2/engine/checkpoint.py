"""A DetectionCheckpointer whose files are replaced atomically and whose loads can be strict."""

import contextlib
import os
import tempfile
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import InputError

__all__ = ["FCOSCheckpointer", "IncompatibleCheckpointError"]


class IncompatibleCheckpointError(InputError):
    """A checkpoint does not fit the model (missing keys or other shapes)."""


class FCOSCheckpointer(DetectionCheckpointer):
    """
    DetectionCheckpointer with these changes:

    - ``save`` writes to a temporary file in the same folder and renames it into place,
      and so does the ``last_checkpoint`` tag: a job killed at any moment leaves the
      previous checkpoint and tag intact (a rename within a folder is atomic on POSIX).
    - with ``strict=True``, ``load`` raises :class:`IncompatibleCheckpointError` naming
      the parameters the checkpoint lacks, has in excess or has with another shape (e.g.
      another number of classes or depth), instead of logging a warning and keeping
      random weights;
    - ``save(..., tag_last=False)`` leaves ``last_checkpoint`` alone (for model_best.pth);
    - with an EMA checkpointable ``"ema"``, checkpoints store the averaged weights as
      ``"model"`` (see fcos_d2/engine/ema.py).
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def _atomic_write(self, path: str, write) -> None:
        folder = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def save(self, name: str, *, tag_last: bool = True, **kwargs: Any) -> None:
        """
        Write ``save_dir/<name>.pth`` (the model, every checkpointable, ``kwargs``) and,
        unless ``tag_last`` is False, point ``last_checkpoint`` at it. With a ModelEMA
        checkpointable "ema", "model" holds the averaged weights and "ema" the training
        weights (see fcos_d2/engine/ema.py).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        ema = self.checkpointables.get("ema")
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with ema.swapped() if ema is not None else contextlib.nullcontext():
            data: Dict[str, Any] = {"model": self.model.state_dict()}
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
            data.update(kwargs)
            self._atomic_write(save_file, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        self._atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            problems = []
            if incompatible.missing_keys:
                problems.append(f"missing: {sorted(incompatible.missing_keys)}")
            if incompatible.unexpected_keys:
                problems.append(f"not in the model: {sorted(incompatible.unexpected_keys)}")
            if incompatible.incorrect_shapes:
                shapes = [
                    f"{k} (checkpoint {tuple(a)}, model {tuple(b)})"
                    for k, a, b in incompatible.incorrect_shapes
                ]
                problems.append("other shapes: " + ", ".join(shapes))
            if problems:
                raise IncompatibleCheckpointError(
                    "checkpoint does not fit the model: " + "; ".join(problems)
                )
        return incompatible
