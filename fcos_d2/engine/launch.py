"""
``launch`` that also runs several worker processes on a machine without a GPU, and joins
a process group that torchrun or SLURM's srun already started.

- In a process that torchrun or srun started as one of several workers (see
  :mod:`fcos_d2.engine.dist_env`), ``launch`` joins that group (NCCL on GPUs, GLOO on
  CPUs), creates Detectron2's per-machine group and runs ``main_func`` in this process.
- Otherwise, with GPUs (or a single process) it is Detectron2's ``launch``; without a GPU,
  each of the ``num_gpus_per_machine`` spawned workers joins a GLOO process group.

CPU workers leave with ``os._exit`` once their work is done and flushed: torch 2.14's
Gloo thread can abort the interpreter's normal shutdown (SIGABRT, ~1 run in 10), which
would turn a finished run into a failed one. A worker that torchrun or srun started on the
CPU therefore ends inside ``launch``: code after it does not run.

Preemption (:mod:`fcos_d2.engine.preemption`): while ``launch`` waits for the workers it
spawned, it passes SIGTERM, SIGUSR1 and SIGUSR2 on to them rather than dying first, and
when they leave with the preemption status it leaves with it too (SystemExit). A CPU worker
stopped by an :class:`~fcos_d2.errors.InputError` (e.g. a checkpoint that cannot be
written) prints its message without a traceback and exits with status 2, and so does
``launch``.
"""

import contextlib
import logging
import os
import socket
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from .. import compat
from ..errors import InputError
from .dist_env import ProcessGroupEnv, check_launch_args, detect_process_group_env
from .preemption import EXIT_PREEMPTED, forward_signals_to_children

__all__ = ["launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: Exit status of a CPU worker stopped by an InputError (it prints the message, no
#: traceback), and then of ``launch``'s process: argparse's and train_net.py's status for
#: bad input.
EXIT_INPUT_ERROR = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of
    ``num_machines`` machines (Detectron2's signature). On a CPU-only machine,
    ``num_gpus_per_machine`` is the number of CPU worker processes.

    In a worker that torchrun or srun started (one of several), the environment decides:
    this process is one worker, ``main_func`` runs here, ``dist_url`` is not used, and
    ``num_gpus_per_machine``/``num_machines``/``machine_rank`` must be their defaults or
    agree with the environment (else InputError).
    """
    pg = detect_process_group_env()
    if pg is not None and pg.world_size > 1:
        check_launch_args(pg, num_gpus_per_machine, num_machines, machine_rank)
        _join_and_run(pg, main_func, args, timeout)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)  # as Detectron2's launch; a Preempted leaves as its SystemExit
        return
    if torch.cuda.is_available():
        with _spawned_workers():
            d2_launch(
                main_func,
                num_gpus_per_machine,
                num_machines=num_machines,
                machine_rank=machine_rank,
                dist_url=dist_url,
                args=args,
            )
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto works for one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.warning("No GPU: starting %d CPU worker(s) with the GLOO backend", num_gpus_per_machine)
    with _spawned_workers():
        context = mp.start_processes(
            _cpu_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                args,
                timeout,
            ),
            daemon=False,
            start_method="spawn",
            join=False,
        )
        # The workers leave together after a preemption checkpoint or a failed write; give
        # the last ones time to finish before the others' exit makes torch terminate them.
        while not context.join(grace_period=30):
            pass


@contextlib.contextmanager
def _spawned_workers() -> Iterator[None]:
    """Around spawning and joining the workers: forward the preemption signals to them, and
    leave with the preemption status (SystemExit) when a worker left with it."""
    with forward_signals_to_children():
        try:
            yield
        except mp.ProcessExitedException as e:
            if e.exit_code == EXIT_INPUT_ERROR:
                logger.error("A worker stopped on the error printed above (exit status 2)")
                raise SystemExit(EXIT_INPUT_ERROR) from None
            if e.exit_code != EXIT_PREEMPTED:
                raise
            logger.warning(
                "The workers stopped on a preemption signal after writing a checkpoint; "
                "run again with --resume to continue (exit status %d)",
                EXIT_PREEMPTED,
            )
            raise SystemExit(EXIT_PREEMPTED) from None


def _run_and_exit(join: Callable[[], None], main_func: Callable[..., Any], args: Tuple) -> None:
    """Join the group, run ``main_func``, and leave the process with os._exit (CPU workers)."""
    code = 0
    try:
        join()
        main_func(*args)
        comm.synchronize()
    except SystemExit as e:  # e.g. preemption.Preempted: its status, without a traceback
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except InputError as e:  # bad input (a file, a key, a failed checkpoint write): one line
        print(f"error (rank {comm.get_rank()}): {e}", file=sys.stderr)
        code = EXIT_INPUT_ERROR
    except BaseException:  # report and exit non-zero; see the module docstring
        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_workers_per_machine + local_rank

    def join() -> None:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
        compat.create_local_process_group(num_workers_per_machine)
        comm.synchronize()

    _run_and_exit(join, main_func, args)


def _agent_store(pg: ProcessGroupEnv, timeout: timedelta) -> Optional[dist.Store]:
    """
    torchrun's store, with keys of their own for each restart of the workers; None where
    torchrun's agent serves no store (then ``pg.init_method`` makes one).

    torchrun's agent keeps its store (and the keys the workers wrote in it) across
    restarts, and torch's "env://" no longer separates restarts: restarted workers read
    the addresses of the dead ones and fail to connect (measured on torch 2.14).
    TORCHELASTIC_RESTART_COUNT names the restart, as torch's own prefix once did.
    """
    if pg.source != "torchrun" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        pg.master_addr, pg.master_port, pg.world_size, is_master=False, timeout=timeout
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"fcos_d2/attempt_{attempt}/", store)


def _join_and_run(
    pg: ProcessGroupEnv, main_func: Callable[..., Any], args: Tuple, timeout: timedelta
) -> None:
    """Join the group ``pg`` describes in this process and run ``main_func`` here."""
    cuda = torch.cuda.is_available()
    if cuda:
        count = torch.cuda.device_count()
        if count > pg.local_rank:
            torch.cuda.set_device(pg.local_rank)
        elif count == 1:  # one GPU per task (e.g. srun --gpus-per-task 1)
            torch.cuda.set_device(0)
        else:
            raise InputError(
                f"{pg.source}: local rank {pg.local_rank} but only {count} GPU(s) are visible"
            )
    backend = "nccl" if cuda else "gloo"
    logger.warning("Joining the process group: %s (%s backend)", pg.describe(), backend.upper())

    def join() -> None:
        store = _agent_store(pg, timeout)
        dist.init_process_group(
            backend=backend,
            init_method=None if store else pg.init_method,
            store=store,
            world_size=pg.world_size,
            rank=pg.rank,
            timeout=timeout,
        )
        compat.create_local_process_group(pg.local_world_size)
        comm.synchronize()

    if not cuda:
        _run_and_exit(join, main_func, args)
    join()
    try:
        main_func(*args)
        comm.synchronize()
    finally:
        dist.destroy_process_group()
