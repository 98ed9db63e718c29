"""fcos_d2/engine/checkpoint.py: checkpoints are written atomically (a failed write leaves the
previous file and last_checkpoint as they were), and tag_last=False leaves the tag alone."""

import os

import pytest
import torch
from torch import nn

from fcos_d2.engine.checkpoint import FCOSCheckpointer


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
    with pytest.raises(OSError, match="disk full"):
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
