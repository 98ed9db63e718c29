"""fcos_d2/engine/preemption.py: the signal names, and no handler without signals. The
preemption itself (a signal stops training after the iteration it reached, with a
checkpoint of it, on every worker; a failed checkpoint write stops every worker):
tests/integration/test_preemption_signals.py; train_net.py with 2 workers:
tests/integration/test_preemption_resume.py."""

import signal

import pytest
from detectron2.engine import HookBase

from fcos_d2.engine import Trainer
from fcos_d2.engine.preemption import parse_signals
from fcos_d2.errors import InputError
from helpers import tiny_cfg


def test_parse_signals():
    assert parse_signals(["SIGTERM", "usr1", " SIGUSR1 "]) == (signal.SIGTERM, signal.SIGUSR1)
    assert parse_signals(()) == ()
    with pytest.raises(InputError, match="SOLVER.PREEMPT_SIGNALS: 'SIGNOPE' is not a signal"):
        parse_signals(["SIGNOPE"])
    with pytest.raises(InputError, match="SIGKILL cannot be handled"):
        parse_signals(["SIGKILL"])


def test_without_signals_no_handler_is_installed(tiny_data, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(
        tiny_cfg(tiny_data, tmp_path, "SOLVER.PREEMPT_SIGNALS", "()", "SOLVER.MAX_ITER", "1")
    )
    seen = []
    trainer.register_hooks([_Record(seen, signal.SIGTERM)])
    trainer.train()
    assert seen == [before]


class _Record(HookBase):
    def __init__(self, seen, signum):
        self.seen, self.signum = seen, signum

    def before_step(self):
        self.seen.append(signal.getsignal(self.signum))
