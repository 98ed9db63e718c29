"""
Training at scale on the CPU (GLOO): train_net.py under torchrun, as two "machines" with
Detectron2's flags, and as SLURM tasks trains exactly as ``--num-gpus 2`` under launch;
a torchrun restart resumes from the last checkpoint; ``--eval-only`` on 2 workers gives
the AP of 1 worker (the environment parsing: tests/unit/engine/test_dist_env.py).
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from helpers import (
    QUICKSTART,
    ROOT,
    TINY_OPTS,
    TRAIN_NET,
    copypaste_ap,
    metrics,
    run_train_net,
    start_iteration,
    tiny_env,
)


def test_train_net_refuses_num_gpus_that_contradicts_torchrun(tmp_path):
    env = dict(
        tiny_env(tmp_path / "cache"),
        RANK="0",
        WORLD_SIZE="2",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="1",
    )
    proc = run_train_net(["--config-file", QUICKSTART, "--num-gpus", "4"], env, check=False)
    assert proc.returncode == 2
    assert "--num-gpus 4 contradicts the torchrun environment" in proc.stdout
    assert "Traceback" not in proc.stdout


# ----------------------------------------------------------------- 2-worker training runs
MAX_ITER = 12
SCHEDULE = [
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.STEPS",
    "(9,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "SOLVER.LOG_PERIOD",
    "1",
    "DATASETS.TEST",
    "()",
    *TINY_OPTS[2:],
]
LOSS_KEYS = ("iteration", "lr", "total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun():
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [exe] if os.path.isfile(exe) else [sys.executable, "-m", "torch.distributed.run"]


def _run_all(cmds, env, timeout=600):
    """Start the commands together (they form one group) and wait for all; (rc, log) each."""
    # Each writes to a file: read one pipe at a time, and a process whose pipe is full (the
    # model printout alone is ~60 KB) blocks the others in the next collective.
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in cmds]
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=f, stderr=subprocess.STDOUT, text=True)
            for cmd, e, f in zip(cmds, env, files)
        ]
        try:
            for p in procs:
                p.wait(timeout=timeout)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        logs = []
        for f in files:
            f.seek(0)
            logs.append(f.read())
        return [(p.returncode, log) for p, log in zip(procs, logs)]


def _losses(out):
    """Per-iteration losses and LR of metrics.json (every iteration: SOLVER.LOG_PERIOD 1)."""
    return [{k: r[k] for k in LOSS_KEYS} for r in metrics(out) if "loss_fcos_cls" in r]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _files(out):
    """The output folder's files, the event file's name reduced to its prefix."""
    names = []
    for name in sorted(os.listdir(out)):
        names.append("events.out.tfevents" if name.startswith("events.out.tfevents") else name)
    return names


def _check_one_copy(out):
    """Only rank 0 wrote checkpoints, metrics and events; rank 1 logged to log.txt.rank1."""
    assert len(glob.glob(os.path.join(out, "events.out.tfevents*"))) == 1
    assert [r["iteration"] for r in _losses(out)] == list(range(MAX_ITER))
    with open(os.path.join(out, "log.txt")) as f:
        assert "Rank of current process: 0. World size: 2" in f.read()
    with open(os.path.join(out, "log.txt.rank1")) as f:
        assert "Rank of current process: 1. World size: 2" in f.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run every launcher is compared with: ``--num-gpus 2`` under launch."""
    base = tmp_path_factory.mktemp("scale")
    env = tiny_env(base / "cache")
    out = base / "launch"
    run_train_net(
        ["--config-file", QUICKSTART, "--num-gpus", "2", "OUTPUT_DIR", str(out), *SCHEDULE], env
    )
    _check_one_copy(out)
    return {"base": base, "env": env, "out": out}


def _launch_torchrun(out, env):
    cmd = [
        *_torchrun(),
        "--nproc-per-node",
        "2",
        TRAIN_NET,
        "--config-file",
        QUICKSTART,
        "OUTPUT_DIR",
        str(out),
        *SCHEDULE,
    ]
    return _run_all([cmd], [env])


def _launch_two_machines(out, env):
    url = f"tcp://127.0.0.1:{_free_port()}"
    cmds = [
        [
            sys.executable,
            TRAIN_NET,
            "--config-file",
            QUICKSTART,
            "--num-machines",
            "2",
            "--machine-rank",
            str(r),
            "--dist-url",
            url,
            "OUTPUT_DIR",
            str(out),
            *SCHEDULE,
        ]
        for r in range(2)
    ]
    return _run_all(cmds, [env, env])


def _launch_slurm(out, env):
    port = str(_free_port())
    envs = [
        dict(
            env,
            SLURM_PROCID=str(r),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(r),
            SLURM_NTASKS_PER_NODE="2",
            SLURM_JOB_NODELIST="localhost",
            MASTER_PORT=port,
        )
        for r in range(2)
    ]
    cmd = [
        sys.executable,
        TRAIN_NET,
        "--config-file",
        QUICKSTART,
        "OUTPUT_DIR",
        str(out),
        *SCHEDULE,
    ]
    return _run_all([cmd, cmd], envs)


@pytest.mark.parametrize("launcher", ["torchrun", "two_machines", "slurm"])
def test_launcher_trains_as_launch_with_two_workers(reference, launcher):
    out = reference["base"] / launcher
    start = {
        "torchrun": _launch_torchrun,
        "two_machines": _launch_two_machines,
        "slurm": _launch_slurm,
    }[launcher]
    for rc, log in start(out, reference["env"]):
        assert rc == 0, log[-5000:]
    _check_one_copy(out)
    assert _files(out) == _files(reference["out"])
    assert _losses(out) == _losses(reference["out"])
    _assert_same_weights(
        _weights(out / "model_final.pth"), _weights(reference["out"] / "model_final.pth")
    )


PROBE = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
from detectron2.utils import comm
from fcos_d2.engine import launch

def probe(out):
    local = [None] * comm.get_local_size()
    dist.all_gather_object(local, comm.get_rank(), group=comm._LOCAL_PROCESS_GROUP)
    info = dict(rank=comm.get_rank(), world=comm.get_world_size(), local_rank=comm.get_local_rank(),
                local_size=comm.get_local_size(), all=comm.all_gather(comm.get_rank()),
                local=local, main=comm.is_main_process())
    with open(os.path.join(out, "rank%d.json" % comm.get_rank()), "w") as f:
        json.dump(info, f)

launch(probe, 1, args=(sys.argv[1],))
"""


def test_comm_helpers_in_a_slurm_job_of_two_machines(tmp_path):
    # 4 SLURM tasks, 2 per machine (block distribution): Detectron2's comm and its
    # per-machine process group see ranks {0, 1} and {2, 3} as machines.
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT))
    env = tiny_env(tmp_path / "cache")
    envs = [
        dict(
            env,
            SLURM_PROCID=str(r),
            SLURM_NTASKS="4",
            SLURM_LOCALID=str(r % 2),
            SLURM_TASKS_PER_NODE="2(x2)",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
        for r in range(4)
    ]
    for e in envs:
        e["MASTER_PORT"] = envs[0]["MASTER_PORT"]
    for rc, log in _run_all([[sys.executable, str(script), str(tmp_path)]] * 4, envs):
        assert rc == 0, log[-3000:]
    for r in range(4):
        info = json.loads((tmp_path / f"rank{r}.json").read_text())
        machine = [0, 1] if r < 2 else [2, 3]
        assert info == {
            "rank": r,
            "world": 4,
            "local_rank": r % 2,
            "local_size": 2,
            "all": [0, 1, 2, 3],
            "local": machine,
            "main": r == 0,
        }


def _children(pid):
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(env.get(b"RANK", b"-1"))


@pytest.mark.slow  # about 50 s on 2 busy cores (3 runs of 2 workers, one of them restarted)
def test_torchrun_restart_resumes_from_the_last_checkpoint(reference):
    out = reference["base"] / "restart"
    cmd = [
        *_torchrun(),
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        TRAIN_NET,
        "--config-file",
        QUICKSTART,
        "--resume",
        "OUTPUT_DIR",
        str(out),
        *SCHEDULE,
    ]
    log_file = tempfile.TemporaryFile("w+")  # not a pipe: see _run_all
    agent = subprocess.Popen(
        cmd, cwd=ROOT, env=reference["env"], stdout=log_file, stderr=subprocess.STDOUT, text=True
    )
    try:
        tag, deadline = out / "last_checkpoint", time.time() + 300
        while time.time() < deadline and not tag.exists():
            time.sleep(0.05)
        assert tag.exists(), "no checkpoint before the deadline"
        worker = [p for p in _children(agent.pid) if _rank_of(p) == 1]
        assert len(worker) == 1, worker
        os.kill(worker[0], signal.SIGKILL)
        agent.wait(timeout=600)
    finally:
        if agent.poll() is None:
            agent.kill()
        log_file.seek(0)
        log = log_file.read()
        log_file.close()
    assert agent.returncode == 0, log[-5000:]
    resumed_from = start_iteration(log) - 1
    assert 0 < resumed_from < MAX_ITER - 1 and resumed_from % 2 == 1, log[-5000:]
    assert [r["iteration"] for r in _losses(out)][-1] == MAX_ITER - 1
    # Up to the checkpoint it resumed from, the job trained as the uninterrupted run.
    ckpt = f"model_{resumed_from:07d}.pth"
    _assert_same_weights(_weights(out / ckpt), _weights(reference["out"] / ckpt))
    # From there it trained as `--resume` from that checkpoint under launch. (Not as the
    # uninterrupted run: a resumed job's data loader starts its sample stream and its
    # augmentation RNG afresh, in Detectron2 as here.)
    again = reference["base"] / "resume_launch"
    again.mkdir()
    shutil.copy(reference["out"] / ckpt, again / ckpt)
    (again / "last_checkpoint").write_text(ckpt)
    run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--num-gpus",
            "2",
            "--resume",
            "OUTPUT_DIR",
            str(again),
            *SCHEDULE,
        ],
        reference["env"],
    )
    _assert_same_weights(_weights(out / "model_final.pth"), _weights(again / "model_final.pth"))
    assert _losses(out)[-(MAX_ITER - 1 - resumed_from) :] == _losses(again)
    # ... and so it ends elsewhere than the uninterrupted run (docs/distributed.md).
    final = _weights(out / "model_final.pth")
    uninterrupted = _weights(reference["out"] / "model_final.pth")
    assert not all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_eval_only_with_two_workers_gives_the_ap_of_one(reference):
    # The trained weights with a box branch that predicts a square of 2 strides around
    # every location: 12 iterations leave AP at 0, these squares hit some objects.
    model = _weights(reference["out"] / "model_final.pth")
    model["head.bbox_pred.weight"].zero_()
    model["head.bbox_pred.bias"].fill_(1.0)
    for name, value in model.items():
        if name.startswith("head.scales."):
            value.fill_(1.0)
    weights = reference["base"] / "squares.pth"
    torch.save({"model": model}, weights)
    opts = [
        "--config-file",
        QUICKSTART,
        "--eval-only",
        "MODEL.WEIGHTS",
        str(weights),
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.0",
        *TINY_OPTS,
    ]
    one, two = reference["base"] / "eval1", reference["base"] / "eval2"
    log1 = run_train_net([*opts, "OUTPUT_DIR", str(one)], reference["env"]).stdout
    [(rc, log2)] = _run_all(
        [[*_torchrun(), "--nproc-per-node", "2", TRAIN_NET, *opts, "OUTPUT_DIR", str(two)]],
        [reference["env"]],
    )
    assert rc == 0, log2[-5000:]
    # The 8 val images were split between the workers; rank 0 gathered the detections.
    assert "Start inference on 8 batches" in log1 and "Start inference on 4 batches" in log2
    ap1, ap2 = copypaste_ap(log1), copypaste_ap(log2)
    assert ap1 == ap2 and ap1["AP50"] > 0, (ap1, ap2)

    def detections(folder):
        with open(folder / "inference" / "coco_instances_results.json") as f:
            return sorted(json.dumps(d, sort_keys=True) for d in json.load(f))

    assert detections(one) == detections(two) and len(detections(one)) > 8
