"""Precision by hardware: the CPU-capability query, what "auto" chooses, and its log line."""

import logging
import os
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fcos_d2
from fcos_d2.modeling import precision
from fcos_d2.modeling.precision import (
    CPUCapability,
    cpu_capability,
    precision_dtype,
    resolve_precision,
)
from helpers import QUICKSTART, ROOT, TINY_OPTS, load_cfg

AVX2 = CPUCapability(
    isa="AVX2", avx512_bf16=False, amx_bf16=False, avx512_vnni=False, amx_int8=False
)
AMX = CPUCapability(isa="AVX512", avx512_bf16=True, amx_bf16=True, avx512_vnni=True, amx_int8=True)


@pytest.fixture(params=[AVX2, AMX], ids=["avx2", "amx"])
def cpu(request, monkeypatch):
    """The CPU-capability query mocked to an AVX2-only CPU or an AMX CPU."""
    monkeypatch.setattr(precision, "cpu_capability", lambda: request.param)
    return request.param


def test_capability_query_agrees_with_the_cpu_flags():
    cap = cpu_capability()
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert cap.avx512_bf16 == ("avx512_bf16" in flags)
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX2", "AVX512_CORE")
    assert cap.native_bf16 == (("avx512_bf16" in flags or "amx_bf16" in flags) and not capped)
    assert cap.isa == torch.backends.cpu.get_cpu_capability()


def test_capability_falls_back_to_cpuinfo_without_torch_queries(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "_torch_cpu_query", lambda name: None)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    cap = precision.cpu_capability.__wrapped__()
    assert cap.avx512_bf16 and cap.native_bf16 and not cap.amx_bf16 and not cap.avx512_vnni


@pytest.mark.parametrize(
    "cap, native", [("", True), ("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True)]
)
def test_onednn_isa_cap_below_bf16_means_emulated(monkeypatch, cap, native):
    monkeypatch.setattr(precision, "_torch_cpu_query", lambda name: None)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    found = precision.cpu_capability.__wrapped__()
    assert found.avx512_bf16 and found.native_bf16 == native
    assert (f"oneDNN capped at {cap}" in found.describe()) == bool(cap)


def test_auto_chooses_by_capability_and_logs_it(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="fcos_d2.modeling.precision"):
        chosen = resolve_precision("auto", "cpu", "MODEL.FCOS.INFERENCE_PRECISION")
    assert chosen == ("bf16" if cpu.native_bf16 else "")
    (record,) = caplog.records
    assert "MODEL.FCOS.INFERENCE_PRECISION 'auto'" in record.message
    assert cpu.describe() in record.message
    assert ("bf16 (native)" if cpu.native_bf16 else "fp32") in record.message
    assert record.levelno == logging.INFO


def test_explicit_bf16_runs_everywhere_and_warns_where_emulated(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="fcos_d2.modeling.precision"):
        chosen = resolve_precision("bf16", "cpu", "SOLVER.AMP.CPU_PRECISION")
    assert chosen == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if cpu.native_bf16:
        assert not warnings
    else:
        (w,) = warnings
        assert "without native bf16" in w.message and "slower than fp32" in w.message


def test_fp32_and_names():
    assert resolve_precision("", "cpu", "K") == ""
    assert resolve_precision("fp32", "cpu", "K") == ""
    with pytest.raises(ValueError, match="K must be one of"):
        resolve_precision("int8", "cpu", "K")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu", "MODEL.FCOS.INFERENCE_PRECISION")
    assert precision_dtype("bf16", "cpu") is torch.bfloat16
    assert precision_dtype("", "cpu") is None


def _model(*opts):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS + list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def test_quickstart_trains_and_infers_by_capability(cpu, caplog):
    """configs/quickstart.yaml trains with SOLVER.AMP.CPU_PRECISION 'auto': bf16 only where
    native, one log line per key naming the capability and the choice; with
    INFERENCE_PRECISION 'auto' the convolutions run in the chosen dtype."""
    with caplog.at_level(logging.INFO, logger="fcos_d2.modeling.precision"):
        model = _model("MODEL.FCOS.INFERENCE_PRECISION", "auto")
    expected = "bf16" if cpu.native_bf16 else ""
    assert model.train_precision == expected and model.inference_precision == expected
    choice = "bf16 (native)" if cpu.native_bf16 else "fp32"
    for key in ("SOLVER.AMP.CPU_PRECISION", "MODEL.FCOS.INFERENCE_PRECISION"):
        (line,) = [r.message for r in caplog.records if f"{key} 'auto'" in r.message]
        assert cpu.describe() in line and choice in line
    seen = []
    model.head.cls_logits.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model.eval()
    with torch.no_grad():
        model([{"image": torch.randint(0, 256, (3, 200, 260)).float()}])  # P7 2x3
    assert seen[-1] == (torch.bfloat16 if cpu.native_bf16 else torch.float32)


def test_amp_off_trains_in_fp32_whatever_the_cpu(cpu):
    assert _model("SOLVER.AMP.ENABLED", "False").train_precision == ""


def test_make_demo_chooses_the_recipe_by_capability(cpu, monkeypatch, capsys):
    """tools/quickstart.py (make demo): configs/quickstart.yaml where bf16 is native,
    configs/quickstart_fp32.yaml elsewhere, and one line saying why; the fp32 recipe trains
    in fp32 on both."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import quickstart

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen = quickstart.choose_config()
    expected = quickstart.CONFIG if cpu.native_bf16 else quickstart.CONFIG_FP32
    assert chosen == expected
    line = capsys.readouterr().out
    assert cpu.describe() in line and line.strip().endswith(os.path.basename(expected))
    cfg = load_cfg(quickstart.CONFIG_FP32)
    cfg.merge_from_list(TINY_OPTS)
    assert build_model(cfg).train_precision == ""
