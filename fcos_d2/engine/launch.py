"""
``launch`` that also runs several worker processes on a machine without a GPU.

With GPUs (or a single process) it is Detectron2's ``launch``. Without a GPU, each of the
``num_gpus_per_machine`` workers joins a GLOO process group. CPU workers leave with
``os._exit`` once their work is done and flushed: torch 2.14's Gloo thread can abort the
interpreter's normal shutdown (SIGABRT, ~1 run in 10), which would turn a finished run
into a failed one.
"""

import logging
import os
import socket
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from .. import compat

__all__ = ["launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


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
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1 or torch.cuda.is_available():
        d2_launch(
            main_func, num_gpus_per_machine, num_machines=num_machines,
            machine_rank=machine_rank, dist_url=dist_url, args=args,
        )  # fmt: skip
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto works for one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.warning("No GPU: starting %d CPU worker(s) with the GLOO backend", num_gpus_per_machine)
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


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
    code = 0
    try:
        dist.init_process_group(
            backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank,
            timeout=timeout,
        )  # fmt: skip
        compat.create_local_process_group(num_workers_per_machine)
        comm.synchronize()
        main_func(*args)
        comm.synchronize()
    except BaseException:  # report and exit non-zero; see the module docstring
        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
