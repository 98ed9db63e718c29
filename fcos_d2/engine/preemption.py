"""
Stopping long runs cleanly: a preemption signal ends training with a checkpoint of the
iteration reached, and a failed checkpoint write stops every worker, not only rank 0.

- :class:`PreemptionHook` (``SOLVER.PREEMPT_SIGNALS``): each worker's handler of those
  signals only sets a flag. After every iteration the workers agree (an all-reduce of the
  flag over a GLOO group, so that all stop at the same iteration though only one may have
  been signalled); then rank 0 writes ``model_<iter>.pth`` and ``last_checkpoint`` as the
  periodic checkpoints are written, and every worker leaves with :class:`Preempted`, exit
  status :data:`EXIT_PREEMPTED` (75). ``--resume`` continues at the next iteration.
- :class:`SyncedPeriodicCheckpointer`: Detectron2's PeriodicCheckpointer (rank 0 writes),
  run on every worker: after each write the workers learn whether it succeeded, and all
  raise :class:`~fcos_d2.engine.checkpoint.CheckpointWriteError` if it did not (the other
  ranks would otherwise wait for rank 0 in the next collective until its timeout).
- :func:`forward_signals_to_children`: the process that spawned the workers passes the
  preemption signals on to them instead of dying first.
"""

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.engine import hooks
from detectron2.utils import comm

from ..errors import InputError
from .checkpoint import CheckpointWriteError, FCOSCheckpointer

__all__ = [
    "EXIT_PREEMPTED",
    "FORWARDED_SIGNALS",
    "Preempted",
    "PreemptionHook",
    "SyncedPeriodicCheckpointer",
    "any_worker",
    "forward_signals_to_children",
    "parse_signals",
]

logger = logging.getLogger("fcos_d2")

#: Exit status of every worker (and of train_net.py) after a preemption checkpoint:
#: sysexits.h's EX_TEMPFAIL, "temporary failure, try again" (run again with --resume).
EXIT_PREEMPTED = 75

#: What the process that spawned the workers (``fcos_d2.engine.launch``) passes on to them.
FORWARDED_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class Preempted(SystemExit):
    """Training stopped on a preemption signal after writing a checkpoint; the exit status
    is :data:`EXIT_PREEMPTED`. A SystemExit, so that Detectron2's train loop runs its
    ``after_train`` hooks without logging it as a failure."""

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.message = message
        self.iteration = iteration

    def __str__(self) -> str:
        return self.message


def parse_signals(names: Sequence[str], key: str = "SOLVER.PREEMPT_SIGNALS") -> Tuple[int, ...]:
    """Signal numbers of names such as ``"SIGTERM"`` or ``"USR1"``; InputError for a name
    that is not a signal or one that cannot be handled (SIGKILL, SIGSTOP)."""
    out = []
    for name in names:
        text = str(name).strip().upper()
        text = text if text.startswith("SIG") else "SIG" + text
        sig = getattr(signal.Signals, text, None) if text.isidentifier() else None
        if sig is None:
            raise InputError(f"{key}: {name!r} is not a signal name (e.g. 'SIGTERM', 'SIGUSR1')")
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise InputError(f"{key}: {sig.name} cannot be handled; use e.g. SIGTERM or SIGUSR1")
        if int(sig) not in out:
            out.append(int(sig))
    return tuple(out)


@functools.lru_cache
def _cpu_group() -> Any:
    """A GLOO group of all ranks (the world group where it is GLOO): the flags travel as CPU
    tensors, so that an NCCL job does not wait for its GPU stream to agree on them."""
    return comm._get_global_gloo_group()


def any_worker(flag: bool) -> bool:
    """Whether ``flag`` is true on any worker (an all-reduce, max; every worker must call
    it at the same point). Without a process group: ``flag``."""
    if comm.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_cpu_group())
    return bool(value.item())


def _rank0_failure_error(what: str) -> CheckpointWriteError:
    return CheckpointWriteError(
        f"rank 0 could not write {what}; training stopped on every worker (rank 0's log "
        "names the file and the free space)"
    )


def save_on_main(checkpointer: FCOSCheckpointer, write: Callable[[], None], what: str) -> None:
    """Run ``write`` (a save with ``checkpointer``) on rank 0, then tell every worker
    whether it succeeded: if it failed, rank 0 raises its CheckpointWriteError and the
    other ranks one that says so."""
    error: Optional[CheckpointWriteError] = None
    if comm.is_main_process():
        try:
            write()
        except CheckpointWriteError as e:
            error = e
    if any_worker(error is not None):
        raise error if error is not None else _rank0_failure_error(what)


class SyncedPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """
    Detectron2's PeriodicCheckpointer hook (``model_<iter>.pth`` every ``period``
    iterations, ``model_final.pth`` after the last), registered on every worker: rank 0
    writes, and at each write all workers agree on its outcome, so that a failed write
    (disk full, no permission) stops all of them with CheckpointWriteError.
    """

    def after_step(self) -> None:
        iteration = self.trainer.iter
        due = (iteration + 1) % self.period == 0 or iteration >= self.max_iter - 1
        if not due:
            return
        what = f"the checkpoint of iteration {iteration}"
        save_on_main(self.checkpointer, lambda: self.step(iteration), what)


def _loader_worker_init(previous: Optional[Callable[[int], None]], signums, worker_id: int):
    for signum in signums:  # the training process decides; see PreemptionHook.before_train
        signal.signal(signum, signal.SIG_IGN)
    if previous is not None:
        previous(worker_id)


def _torch_loaders(loader: Any) -> Iterator[torch.utils.data.DataLoader]:
    """The torch DataLoader in ``loader`` (Detectron2 wraps it in AspectRatioGroupedDataset)."""
    for _ in range(4):
        if isinstance(loader, torch.utils.data.DataLoader):
            yield loader
            return
        loader = getattr(loader, "dataset", None)


class PreemptionHook(hooks.HookBase):
    """
    Stop training on the ``signals`` (names, e.g. ``("SIGTERM", "SIGUSR1")``) with a
    checkpoint of the iteration reached: the handlers only set a flag; after each
    iteration the workers agree on it (all stop at the same iteration), rank 0 writes
    ``model_<iter>.pth`` and ``last_checkpoint`` (unless that iteration's checkpoint is
    already written), and every worker raises :class:`Preempted`. Register it last, so that
    the other hooks (LR schedule, evaluation, writers) have run for that iteration, as they
    have when a periodic checkpoint is written.

    The handlers are installed when training starts (in the main thread; elsewhere a
    warning says they are not) and the previous ones come back after the last iteration,
    so that a signal during the final evaluation acts as without this hook. Data loader
    worker processes ignore the signals: a signal sent to the whole process group (as
    SLURM sends it) must not kill them under the training process.
    """

    def __init__(self, checkpointer: FCOSCheckpointer, signals: Sequence[str]) -> None:
        self.checkpointer = checkpointer
        self.signums = parse_signals(signals)
        self.received: Optional[int] = None
        #: The iteration training stopped after on a preemption signal, else None.
        self.stopped_at: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "Training outside the main thread: no handlers of %s (preemption)",
                ", ".join(signal.Signals(s).name for s in self.signums),
            )
            return
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def before_train(self) -> None:
        if not self.signums:
            return
        self._install()
        for loader in _torch_loaders(getattr(self.trainer, "data_loader", None)):
            if loader.num_workers > 0:
                previous = loader.worker_init_fn
                loader.worker_init_fn = functools.partial(
                    _loader_worker_init, previous, self.signums
                )

    def after_step(self) -> None:
        if not self.signums:
            return
        iteration = self.trainer.iter
        if not any_worker(self.received is not None):
            if iteration >= self.trainer.max_iter - 1:
                self._restore()
            return
        final = iteration >= self.trainer.max_iter - 1
        name = "model_final" if final else f"model_{iteration:07d}"
        path = os.path.join(self.checkpointer.save_dir, name + ".pth")
        why = signal.Signals(self.received).name if self.received else "another worker's"
        logger.warning(
            "Preemption: %s signal; stopping after iteration %d with a checkpoint", why, iteration
        )

        def write() -> None:
            if not self._already_written(name):
                self.checkpointer.save(name, iteration=iteration)

        save_on_main(self.checkpointer, write, f"the preemption checkpoint {path}")
        message = (
            f"preempted after iteration {iteration}: checkpoint {path}; run again with "
            f"--resume to continue at iteration {iteration + 1} (exit status {EXIT_PREEMPTED})"
        )
        logger.warning(message)
        self.stopped_at = iteration
        raise Preempted(message, iteration)

    def _already_written(self, name: str) -> bool:
        """Whether last_checkpoint names ``name`` (the periodic checkpointer wrote it at this
        iteration)."""
        tag = os.path.join(self.checkpointer.save_dir, "last_checkpoint")
        with contextlib.suppress(OSError):
            with open(tag) as f:
                return f.read().strip() == name + ".pth"
        return False

    def after_train(self) -> None:
        # After a preemption the handlers stay: a second signal must not kill the exit.
        if self.stopped_at is None:
            self._restore()


@contextlib.contextmanager
def forward_signals_to_children(names: Sequence[str] = FORWARDED_SIGNALS) -> Iterator[None]:
    """While in the block, the signals ``names`` received by this process are sent on to
    its child processes (the workers it spawned) instead of ending it. Outside the main
    thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in parse_signals(names, "signals")}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
