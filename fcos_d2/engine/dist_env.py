"""
The process group described by the environment of a worker started by torchrun (or any
launcher that sets its variables: torch elastic, Kubernetes PyTorchJob with torchrun) or
by SLURM's ``srun``.

Such a process is one worker of a group that already exists: ``fcos_d2.engine.launch``
joins it instead of spawning ``--num-gpus`` workers. This module only reads and checks
the variables; it starts nothing.
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from ..errors import InputError

__all__ = [
    "SLURM_VARS",
    "TORCHRUN_VARS",
    "ProcessGroupEnv",
    "check_launch_args",
    "detect_process_group_env",
    "first_slurm_host",
]

logger = logging.getLogger(__name__)

#: What torchrun sets for each worker; all are needed once one of the first four is set.
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
#: What srun sets for each task (the tasks per machine may come from SLURM_TASKS_PER_NODE).
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")
#: Without MASTER_PORT, SLURM jobs use this port plus SLURM_JOB_ID modulo 20000.
SLURM_BASE_PORT = 15000


@dataclass(frozen=True)
class ProcessGroupEnv:
    """One worker's place in a process group, as its launcher described it."""

    source: str  # "torchrun" or "SLURM"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size

    @property
    def init_method(self) -> str:
        # torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT; "env://" joins
        # it (and the store of each restart). Under SLURM, rank 0 serves one at that address.
        if self.source == "torchrun":
            return "env://"
        return f"tcp://{self.master_addr}:{self.master_port}"

    def describe(self) -> str:
        return (
            f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} of "
            f"{self.local_world_size}) from the {self.source} environment, master "
            f"{self.master_addr}:{self.master_port}"
        )


def first_slurm_host(nodelist: str) -> str:
    """
    The first host of a SLURM host list: ``"node[03-05,9],gpu1"`` -> ``"node03"``,
    ``"a[1-2]b[7-8]"`` -> ``"a1b7"``, ``"host"`` -> ``"host"``.
    """
    text, depth = nodelist.strip(), 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            text = text[:i]
            break
    host = ""
    while "[" in text:
        prefix, _, rest = text.partition("[")
        inner, closed, text = rest.partition("]")
        first = inner.split(",")[0].split("-")[0]
        if not closed or not first:
            host = ""
            break
        host += prefix + first
    else:
        host += text
    if not host or any(c in host for c in "[],"):
        raise InputError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read its first host")
    return host


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} is not an integer") from None


def _missing_error(source: str, present: List[str], missing: List[str], hint: str) -> InputError:
    return InputError(
        f"half-set {source} environment: {', '.join(present)} set but "
        f"{', '.join(missing)} missing; {hint}"
    )


def _torchrun_env(env: Mapping[str, str]) -> Optional[ProcessGroupEnv]:
    markers = [k for k in TORCHRUN_VARS[:4] if k in env]
    if not markers:
        return None
    missing = [k for k in TORCHRUN_VARS if k not in env]
    if missing:
        raise _missing_error(
            "torchrun",
            markers,
            missing,
            "set all of " + ", ".join(TORCHRUN_VARS) + " (torchrun does), or none",
        )
    return _validated(
        "torchrun",
        _int(env, "RANK"),
        _int(env, "WORLD_SIZE"),
        _int(env, "LOCAL_RANK"),
        _int(env, "LOCAL_WORLD_SIZE"),
        env["MASTER_ADDR"],
        _int(env, "MASTER_PORT"),
    )


def _tasks_per_node(env: Mapping[str, str]) -> Optional[int]:
    if "SLURM_NTASKS_PER_NODE" in env:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    # SLURM_TASKS_PER_NODE is always set by srun: "4", "4(x2)" or, if uneven, "4(x2),3".
    text = env.get("SLURM_TASKS_PER_NODE")
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)(\(x\d+\))?", text)
    if m is None:
        raise InputError(
            f"SLURM_TASKS_PER_NODE={text}: the machines run different numbers of tasks; "
            "fcos-d2 needs the same number on every machine (sbatch --ntasks-per-node)"
        )
    return int(m.group(1))


def _slurm_env(env: Mapping[str, str]) -> Optional[ProcessGroupEnv]:
    present = [k for k in SLURM_VARS if k in env]
    ntasks = _int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else None
    if ntasks is None:
        # The batch script of a job without --ntasks is task 0 of 1: not a group. A task id
        # above 0 without SLURM_NTASKS can only be a half-set environment.
        others = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if env.get(k, "0") != "0"]
        if others:
            raise _missing_error("SLURM", present, ["SLURM_NTASKS"], "start the tasks with srun")
        return None
    if ntasks <= 1:
        return None
    per_node = _tasks_per_node(env)
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if k not in env]
    if per_node is None:
        missing.append("SLURM_NTASKS_PER_NODE (or SLURM_TASKS_PER_NODE)")
    if "MASTER_ADDR" not in env and "SLURM_JOB_NODELIST" not in env:
        missing.append("SLURM_JOB_NODELIST (or MASTER_ADDR)")
    if "MASTER_PORT" not in env and "SLURM_JOB_ID" not in env:
        missing.append("MASTER_PORT (or SLURM_JOB_ID)")
    if missing:
        raise _missing_error("SLURM", present, missing, "start the tasks with srun")
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        logger.warning(
            "SLURM_NTASKS=%d but no SLURM_STEP_ID: if this is the batch script itself rather "
            "than a task started by srun, it waits for %d other tasks; start train_net.py "
            "with srun",
            ntasks,
            ntasks - 1,
        )
    addr = env.get("MASTER_ADDR") or first_slurm_host(env["SLURM_JOB_NODELIST"])
    if "MASTER_PORT" in env:
        port = _int(env, "MASTER_PORT")
    else:
        port = SLURM_BASE_PORT + _int(env, "SLURM_JOB_ID") % 20000
    return _validated(
        "SLURM",
        _int(env, "SLURM_PROCID"),
        ntasks,
        _int(env, "SLURM_LOCALID"),
        per_node,
        addr,
        port,
    )


def _validated(
    source: str, rank: int, world: int, local_rank: int, local_world: int, addr: str, port: int
) -> ProcessGroupEnv:
    names = {
        "torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
        "SLURM": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
    }[source]
    values = dict(zip(names, (rank, world, local_rank, local_world)))
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise InputError(f"inconsistent {source} environment: {shown}")
    if world % local_world:
        raise InputError(
            f"{source} environment: {shown}: the machines run different numbers of workers; "
            "fcos-d2 needs the same number on every machine"
        )
    if rank % local_world != local_rank:
        # Detectron2's per-machine process group assumes machine m has ranks
        # m * local_world ... (m + 1) * local_world - 1.
        raise InputError(
            f"{source} environment: {shown}: the ranks of a machine are not consecutive "
            "(for SLURM use the default block distribution, srun --distribution=block)"
        )
    return ProcessGroupEnv(source, rank, world, local_rank, local_world, addr, port)


def detect_process_group_env(
    env: Optional[Mapping[str, str]] = None,
) -> Optional[ProcessGroupEnv]:
    """
    The process group that ``env`` (default ``os.environ``) describes, or None.

    torchrun's variables win where srun started torchrun (both sets are present and
    TORCHELASTIC_RUN_ID says torchrun set its own); if both sets are present without
    torchrun and disagree, that is ambiguous. Raises InputError naming the missing
    variables of a half-set environment, or the contradicting ones.
    """
    env = os.environ if env is None else env
    torchrun = _torchrun_env(env)
    if torchrun is not None and "TORCHELASTIC_RUN_ID" in env:
        return torchrun
    slurm = _slurm_env(env)
    if torchrun is not None and slurm is not None:
        if (torchrun.rank, torchrun.world_size) != (slurm.rank, slurm.world_size):
            raise InputError(
                "ambiguous environment: RANK/WORLD_SIZE say rank "
                f"{torchrun.rank} of {torchrun.world_size}, SLURM_PROCID/SLURM_NTASKS say "
                f"rank {slurm.rank} of {slurm.world_size}; unset one set (torchrun sets "
                "TORCHELASTIC_RUN_ID beside its own)"
            )
    return torchrun if torchrun is not None else slurm


def check_launch_args(
    pg: ProcessGroupEnv, num_gpus_per_machine: int, num_machines: int, machine_rank: int
) -> None:
    """
    Raise InputError if ``--num-gpus``/``--num-machines``/``--machine-rank`` contradict the
    environment, where each process is one worker. Their defaults (1, 1, 0) and the
    environment's own numbers are accepted.
    """
    per_machine = "LOCAL_WORLD_SIZE" if pg.source == "torchrun" else "SLURM_NTASKS_PER_NODE"
    problems: Dict[str, str] = {}
    if num_gpus_per_machine not in (1, pg.local_world_size):
        problems["--num-gpus"] = (
            f"--num-gpus {num_gpus_per_machine} contradicts the {pg.source} environment, which "
            f"started {pg.local_world_size} worker process(es) on this machine "
            f"({per_machine}={pg.local_world_size}), each one worker: leave --num-gpus out "
            f"(or give {pg.local_world_size}); to have --num-gpus start the workers, run "
            f"train_net.py outside {pg.source}"
        )
    if num_machines not in (1, pg.num_machines):
        problems["--num-machines"] = (
            f"--num-machines {num_machines} contradicts the {pg.source} environment "
            f"({pg.world_size} workers, {pg.local_world_size} per machine: "
            f"{pg.num_machines} machine(s)); leave --num-machines out"
        )
    if machine_rank not in (0, pg.machine_rank):
        problems["--machine-rank"] = (
            f"--machine-rank {machine_rank} contradicts the {pg.source} environment (rank "
            f"{pg.rank}, {pg.local_world_size} per machine: machine {pg.machine_rank}); "
            "leave --machine-rank out"
        )
    if problems:
        raise InputError("; ".join(problems.values()))
