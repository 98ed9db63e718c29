"""
Preemption of train_net.py with 2 CPU workers (fcos_d2/engine/preemption.py): SIGTERM
mid-run leaves a checkpoint of the iteration reached, every process exits with status 75,
and ``--resume`` continues at the next iteration and ends with the uninterrupted run's
weights, bit for bit (one training image and no flip: every batch is the same, whatever
order the resumed loader starts with).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import QUICKSTART, ROOT, TINY_OPTS, TRAIN_NET, metrics, run_train_net, tiny_env

MAX_ITER = 10
SIGNAL_AFTER = 3  # the signal is sent once metrics.json shows this iteration
OPTS = [
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.STEPS",
    "()",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "SOLVER.LOG_PERIOD",
    "1",
    "TEST.EVAL_PERIOD",
    "0",
    "DATASETS.TEST",
    "()",
    "INPUT.RANDOM_FLIP",
    "none",
    *TINY_OPTS,
]


def _args(out, *extra):
    return ["--config-file", QUICKSTART, "--num-gpus", "2", *extra, "OUTPUT_DIR", str(out), *OPTS]


def _iterations(out):
    return [r["iteration"] for r in metrics(out) if "loss_fcos_cls" in r]


def _logged(out, iteration: int) -> bool:
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        lines = f.read().splitlines()
    return any(json.loads(line).get("iteration") == iteration for line in lines[:-1])


def _start_and_signal(cmd, env, out, signum, target, after=SIGNAL_AFTER, **popen):
    """Start ``cmd``; once metrics.json shows iteration ``after``, send ``signum`` to
    ``target(proc)`` (a pid; a negative one for a process group); (returncode, log)."""
    # The output goes to a file: a pipe that nobody reads while waiting for the iteration
    # fills up (the model printout alone is ~60 KB) and blocks the run.
    log_path = f"{out}.log"
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True, **popen
        )
        try:
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline and not _logged(out, after):
                time.sleep(0.02)
            ended = proc.poll() is not None
            if not ended:
                pid = target(proc)
                os.killpg(-pid, signum) if pid < 0 else os.kill(pid, signum)
                proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    with open(log_path) as f:
        log = f.read()
    assert not ended, "the run ended before the signal:\n" + log[-5000:]
    return proc.returncode, log


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _check_preempted(out, log):
    """The iteration the run stopped after, checked against its files and logs."""
    tag = (out / "last_checkpoint").read_text()
    stopped = int(tag[len("model_") : -len(".pth")])
    assert SIGNAL_AFTER <= stopped < MAX_ITER - 1, log[-3000:]
    assert torch.load(out / tag, weights_only=False)["iteration"] == stopped
    assert not [n for n in os.listdir(out) if n.startswith(".tmp_")]
    assert _iterations(out) == list(range(stopped + 1))  # each iteration logged once
    # Both workers stopped after that iteration (rank 1 logs to log.txt.rank1).
    for name in ("log.txt", "log.txt.rank1"):
        text = (out / name).read_text()
        assert f"stopping after iteration {stopped} with a checkpoint" in text, name
    assert f"preempted after iteration {stopped}" in log and "exit status 75" in log
    return stopped


def _resume_and_compare(out, env, stopped, reference):
    resumed = run_train_net(_args(out, "--resume"), env)
    assert f"Starting training from iteration {stopped + 1}" in resumed.stdout
    assert _iterations(out) == list(range(MAX_ITER))  # none repeated, none skipped
    final, uninterrupted = _weights(out / "model_final.pth"), _weights(reference)
    assert final.keys() == uninterrupted.keys()
    different = [k for k in final if not torch.equal(final[k], uninterrupted[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def preempt_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("preempt")
    return {"base": base, "env": tiny_env(base / "cache", train_images=1)}


@pytest.fixture(scope="module")
def uninterrupted(preempt_env):
    out = preempt_env["base"] / "uninterrupted"
    run_train_net(_args(out), preempt_env["env"])
    assert _iterations(out) == list(range(MAX_ITER))
    return out / "model_final.pth"


@pytest.mark.slow  # about 60-90 s on 2 cores (3 train_net runs of 2 workers); the default
# suite has tests/integration/test_preemption_signals.py (resume in-process, 2-worker
# agreement)
def test_sigterm_to_train_net_checkpoints_exits_75_and_resumes_exactly(preempt_env, uninterrupted):
    # SIGTERM to train_net.py (the process that spawned the workers): it forwards it.
    out, env = preempt_env["base"] / "sigterm", preempt_env["env"]
    cmd = [sys.executable, TRAIN_NET, *_args(out)]
    rc, log = _start_and_signal(cmd, env, out, signal.SIGTERM, lambda p: p.pid)
    assert rc == 75, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    stopped = _check_preempted(out, log)
    _resume_and_compare(out, env, stopped, uninterrupted)


@pytest.mark.slow  # about 35 s on 2 cores: 2 runs with data loader worker processes
def test_sigterm_to_the_process_group_with_loader_workers(preempt_env, uninterrupted):
    # As SLURM signals a job step (SIGTERM at preemption, or `--signal=USR1@120`): every
    # process gets it, the data loader worker processes too, which must survive it (torch's
    # own SIGTERM handler in them would kill them, and the training process with them).
    out, env = preempt_env["base"] / "group", preempt_env["env"]
    cmd = [sys.executable, TRAIN_NET, *_args(out), "DATALOADER.NUM_WORKERS", "1"]
    rc, log = _start_and_signal(
        cmd, env, out, signal.SIGTERM, lambda p: -os.getpgid(p.pid), start_new_session=True
    )
    assert rc == 75, log[-3000:]
    assert "DataLoader worker" not in log, log[-3000:]
    stopped = _check_preempted(out, log)
    _resume_and_compare(out, env, stopped, uninterrupted)
