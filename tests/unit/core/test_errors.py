"""fcos_d2/errors.py: InputError, and how the command-line entry points report it."""

import os
import runpy
import sys

import pytest

from fcos_d2 import InputError
from fcos_d2.config import get_fcos_cfg
from helpers import ROOT


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError, match="config file not found: nope.yaml"):
        get_fcos_cfg("nope.yaml")
    assert issubclass(InputError, ValueError)


def test_train_net_prints_one_error_line_and_exits_2(monkeypatch, capsys, tmp_path):
    """train_net.py run as a script (in this process): an InputError becomes one
    ``train_net.py: error:`` line naming the problem, exit status 2, no traceback."""
    missing = str(tmp_path / "missing.yaml")
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--config-file", missing])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "train_net.py"), run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"train_net.py: error: config file not found: {missing}"]
    assert "Traceback" not in out + err
