"""fcos_d2/engine/checkpoint.py: checkpoints are written atomically (a failed write leaves the
previous file and last_checkpoint as they were, and says where and how much space is free),
and tag_last=False leaves the tag alone."""

import errno
import os
import shutil
import tempfile

import pytest
import torch
from torch import nn

from fcos_d2.engine.checkpoint import CheckpointWriteError, FCOSCheckpointer


def _checkpointer(tmp_path, value: float) -> FCOSCheckpointer:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(value)
    return FCOSCheckpointer(model, save_dir=str(tmp_path))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _checkpointer(tmp_path, 1.0).save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointWriteError, match="disk full"):
        _checkpointer(tmp_path, 2.0).save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temp file
    monkeypatch.undo()
    loaded = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert loaded["model"]["weight"].eq(1.0).all()


def test_tag_last_false_leaves_last_checkpoint(tmp_path):
    ckpt = _checkpointer(tmp_path, 1.0)
    ckpt.save("model_0000009")
    ckpt.save("model_best", tag_last=False)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_best.pth").exists()
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")


def test_disk_full_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    _checkpointer(tmp_path, 1.0).save("model_0000001")

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK-partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        _checkpointer(tmp_path, 2.0).save("model_0000003")
    message = str(info.value)
    assert str(tmp_path / "model_0000003.pth") in message
    assert "No space left on device" in message and info.value.errno == errno.ENOSPC
    free = shutil.disk_usage(tmp_path).free
    assert " free of " in message and f"in {tmp_path}" in message
    # The number printed is the folder's free space (in GiB/MiB with one decimal).
    number, unit = message.split(" free of ")[0].split("(")[-1].split()
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert abs(float(number) * scale - free) <= 0.06 * scale + 2**20
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    ckpt = _checkpointer(tmp_path, 0.0)
    ckpt.resume_or_load("", resume=True)  # the previous checkpoint loads
    assert ckpt.model.weight.eq(1.0).all()


def test_failed_tag_write_keeps_the_previous_tag(tmp_path, monkeypatch):
    ckpt = _checkpointer(tmp_path, 1.0)
    ckpt.save("model_0000001")
    real_mkstemp = tempfile.mkstemp

    def no_permission(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".tmp_last_checkpoint"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", no_permission)
    with pytest.raises(CheckpointWriteError, match="last_checkpoint: Permission denied"):
        ckpt.save("model_0000003")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp_")]
