"""fcos_d2/engine/dist_env.py: the launcher environment (torchrun, SLURM) is read and
checked; half-set or contradicting environments are refused with the variables named."""

import pytest

from fcos_d2.engine.dist_env import (
    ProcessGroupEnv,
    check_launch_args,
    detect_process_group_env,
    first_slurm_host,
)
from fcos_d2.errors import InputError

# ------------------------------------------------------------------ environment parsing
TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
}


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("node[03-05,9],gpu1", "node03"),
        ("gpu1,node[03-05]", "gpu1"),
        ("a[1-2]b[7,8]", "a1b7"),
        ("rack1-n[010-012]", "rack1-n010"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_first_slurm_host_refuses_malformed_lists():
    for bad in ("", "node[", "node[]"):
        with pytest.raises(InputError, match="SLURM_JOB_NODELIST"):
            first_slurm_host(bad)


def test_torchrun_environment():
    pg = detect_process_group_env(TORCHRUN)
    assert pg == ProcessGroupEnv("torchrun", 3, 4, 1, 2, "10.0.0.1", 29500)
    assert (pg.num_machines, pg.machine_rank, pg.init_method) == (2, 1, "env://")
    assert detect_process_group_env({"PATH": "/bin", "MASTER_PORT": "1"}) is None


def test_half_set_torchrun_environment_names_the_missing_variables():
    env = {k: TORCHRUN[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    with pytest.raises(InputError) as e:
        detect_process_group_env(env)
    assert "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_PORT missing" in str(e.value)


def test_slurm_environment():
    # Rank 5 of 8 with 4 tasks per machine: machine 1; master on the list's first host and
    # port 15000 + 123456 % 20000 = 18456.
    pg = detect_process_group_env(SLURM)
    assert pg == ProcessGroupEnv("SLURM", 5, 8, 1, 4, "gpu07", 18456)
    assert pg.init_method == "tcp://gpu07:18456" and pg.machine_rank == 1
    env = dict(SLURM, MASTER_ADDR="10.0.0.9", MASTER_PORT="4000")
    assert detect_process_group_env(env).init_method == "tcp://10.0.0.9:4000"
    del env["SLURM_NTASKS_PER_NODE"]
    assert detect_process_group_env(dict(env, SLURM_TASKS_PER_NODE="4(x2)")).local_world_size == 4
    with pytest.raises(InputError, match=r"SLURM_TASKS_PER_NODE=4\(x1\),3: .*different numbers"):
        detect_process_group_env(dict(env, SLURM_TASKS_PER_NODE="4(x1),3", SLURM_NTASKS="7"))


def test_slurm_single_task_or_batch_script_is_not_a_group():
    # One task (e.g. the batch script of `sbatch --ntasks 1`): --num-gpus spawns as usual.
    assert detect_process_group_env(dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0")) is None
    assert detect_process_group_env({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) is None


def test_half_set_slurm_environment_names_the_missing_variables():
    with pytest.raises(InputError, match="SLURM_PROCID set but SLURM_NTASKS missing"):
        detect_process_group_env({"SLURM_PROCID": "1"})
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    with pytest.raises(InputError) as e:
        detect_process_group_env(env)
    for name in ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST", "MASTER_PORT"):
        assert name in str(e.value)


def test_inconsistent_or_ambiguous_environments():
    with pytest.raises(InputError, match="inconsistent torchrun environment: RANK=4, WORLD_SIZE=4"):
        detect_process_group_env(dict(TORCHRUN, RANK="4"))
    # Cyclic task distribution: rank 1 is machine 1's first task.
    with pytest.raises(InputError, match="not consecutive"):
        detect_process_group_env(dict(SLURM, SLURM_PROCID="1", SLURM_LOCALID="0"))
    # Both sets, set by hand, describing different groups.
    with pytest.raises(InputError, match="ambiguous environment: .* rank 3 of 4, .* rank 5 of 8"):
        detect_process_group_env({**SLURM, **TORCHRUN})
    # srun started torchrun: torchrun's own variables win.
    pg = detect_process_group_env({**SLURM, **TORCHRUN, "TORCHELASTIC_RUN_ID": "x"})
    assert pg.source == "torchrun" and pg.rank == 3


def test_arguments_that_contradict_the_environment():
    pg = detect_process_group_env(TORCHRUN)  # 2 machines x 2 workers, this is machine 1
    for ok in [(1, 1, 0), (2, 1, 0), (2, 2, 1), (1, 2, 1)]:
        check_launch_args(pg, *ok)
    with pytest.raises(InputError, match="--num-gpus 8 contradicts the torchrun environment"):
        check_launch_args(pg, 8, 1, 0)
    with pytest.raises(InputError, match="--num-machines 3 contradicts"):
        check_launch_args(pg, 1, 3, 0)
    with pytest.raises(InputError, match="--machine-rank 2 contradicts .* machine 1"):
        check_launch_args(pg, 1, 2, 2)
