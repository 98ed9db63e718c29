"""A DetectionCheckpointer whose files are replaced atomically and whose loads can be strict."""

import contextlib
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import InputError

__all__ = ["CheckpointWriteError", "FCOSCheckpointer", "IncompatibleCheckpointError"]


class IncompatibleCheckpointError(InputError):
    """A checkpoint does not fit the model (missing keys or other shapes)."""


class CheckpointWriteError(InputError):
    """A checkpoint (or ``last_checkpoint``) could not be written: disk full, no permission,
    ... The message names the file and the free space of its folder; ``errno`` is the
    OSError's (None on the ranks that only learnt of rank 0's failure). The previous
    checkpoint and ``last_checkpoint`` are as they were, and no partial file is left."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _free_space(folder: str) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError as e:
        return f"free space of {folder} unknown ({e.strerror or e})"
    return f"{_size(usage.free)} free of {_size(usage.total)} in {folder}"


class FCOSCheckpointer(DetectionCheckpointer):
    """
    DetectionCheckpointer with these changes:

    - ``save`` writes to a temporary file in the same folder and renames it into place,
      and so does the ``last_checkpoint`` tag: a job killed at any moment leaves the
      previous checkpoint and tag intact (a rename within a folder is atomic on POSIX).
      A write that fails (OSError: disk full, permission) removes its temporary file and
      raises :class:`CheckpointWriteError` naming the file and the folder's free space.
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
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None and os.path.exists(tmp):
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            if isinstance(e, OSError):
                reason = e.strerror or str(e)
                raise CheckpointWriteError(
                    f"could not write {path}: {reason} ({_free_space(folder)}); the previous "
                    "checkpoint and last_checkpoint are unchanged",
                    errno=e.errno,
                ) from e
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
