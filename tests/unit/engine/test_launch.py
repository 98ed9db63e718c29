"""fcos_d2/engine/launch.py in this process: one worker runs here, the preemption status of
spawned workers becomes this process's, and arguments it cannot use are refused (several
CPU workers: tests/integration/test_distributed.py)."""

import os

import pytest
import torch.multiprocessing as mp

from fcos_d2.engine.launch import _spawned_workers, launch
from fcos_d2.engine.preemption import EXIT_PREEMPTED
from helpers import LAUNCHER_VARS


@pytest.fixture
def no_launcher(monkeypatch):
    for name in [*LAUNCHER_VARS, *(k for k in os.environ if k.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)


def test_one_worker_runs_here(no_launcher):
    calls = []
    launch(lambda *a: calls.append((os.getpid(), a)), 1, args=(3, "x"))
    assert calls == [(os.getpid(), (3, "x"))]


def test_auto_url_needs_one_machine(no_launcher, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="one machine only"):
        launch(lambda: None, 2, num_machines=2, dist_url="auto")


def test_workers_preemption_status_is_this_process_status():
    with pytest.raises(SystemExit) as e:
        with _spawned_workers():
            raise mp.ProcessExitedException("w", error_index=0, error_pid=1, exit_code=75)
    assert e.value.code == EXIT_PREEMPTED == 75
    with pytest.raises(mp.ProcessExitedException):  # any other status stays a failure
        with _spawned_workers():
            raise mp.ProcessExitedException("w", error_index=0, error_pid=1, exit_code=1)


def test_workers_bad_input_is_one_line_and_status_2(monkeypatch, capsys):
    """A CPU worker stopped by an InputError prints it on one line (no traceback) and exits
    2; launch then exits 2 as well (the worker's os._exit and logging shutdown are stubbed)."""
    import importlib
    import logging

    from fcos_d2 import InputError

    launch_module = importlib.import_module("fcos_d2.engine.launch")  # the module

    codes = []
    monkeypatch.setattr(launch_module.os, "_exit", codes.append)
    monkeypatch.setattr(logging, "shutdown", lambda: None)

    def main():
        raise InputError("could not write out/model_0000003.pth: No space left on device")

    launch_module._run_and_exit(lambda: None, main, ())
    assert codes == [2]
    err = capsys.readouterr().err
    assert err == "error (rank 0): could not write out/model_0000003.pth: No space left on device\n"
    with pytest.raises(SystemExit) as e:
        with _spawned_workers():
            raise mp.ProcessExitedException("w", error_index=1, error_pid=1, exit_code=2)
    assert e.value.code == 2
