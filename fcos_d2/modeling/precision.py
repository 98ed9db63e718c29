"""
Reduced precision by hardware: which autocast dtype a precision name means on a device, and
what ``"auto"`` chooses there.

bfloat16 pays only where the hardware executes it: NVIDIA GPUs, and CPUs with AVX512-BF16
or AMX. Elsewhere (AVX2-only CPUs, AVX-512 without BF16) PyTorch emulates it: a training
iteration of configs/quickstart.yaml took 5.55 s in bf16 against 0.58 s in fp32 on a 2-core
CPU with oneDNN and ATen capped at AVX2 (docs/quickstart.md). ``"auto"`` therefore picks
bf16 only where :func:`cpu_capability` reports native bf16, and fp32 elsewhere; an
explicit ``"bf16"`` still runs there, with a warning.
"""

import functools
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..deploy import ONEDNN_ISAS_WITHOUT_BF16, onednn_isa_cap

__all__ = [
    "CPUCapability",
    "PRECISIONS",
    "cpu_capability",
    "native_bf16",
    "precision_dtype",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

#: Precision names (MODEL.FCOS.INFERENCE_PRECISION, SOLVER.AMP.CPU_PRECISION): "" or "fp32"
#: (float32), "bf16", "fp16" (GPU only), "auto" (see :func:`resolve_precision`).
PRECISIONS = ("", "fp32", "bf16", "fp16", "auto")

#: How much slower than fp32 emulated bf16 ran where the CPU lacks it (docs/quickstart.md).
EMULATED_BF16_SLOWDOWN = "about 5-10x"


@dataclass(frozen=True)
class CPUCapability:
    """What the CPU executes natively, as far as reduced precision is concerned."""

    isa: str  # torch's dispatch level: "AVX512", "AVX2", "DEFAULT", ...
    avx512_bf16: bool
    amx_bf16: bool
    avx512_vnni: bool
    amx_int8: bool
    #: oneDNN's ISA cap (environment ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA), "" if none.
    onednn_max_isa: str = ""

    @property
    def native_bf16(self) -> bool:
        """Whether bfloat16 arithmetic runs in hardware (AVX512-BF16 or AMX) and oneDNN,
        which runs the convolutions, is allowed to use it (no ISA cap below
        AVX512_CORE_BF16)."""
        if self.onednn_max_isa.upper() in ONEDNN_ISAS_WITHOUT_BF16:
            return False
        return self.avx512_bf16 or self.amx_bf16

    def describe(self) -> str:
        """One line, e.g. "AVX2 (no AVX512-BF16, no AMX)"."""
        flags = [
            ("AVX512-BF16", self.avx512_bf16),
            ("AMX", self.amx_bf16),
            ("AVX512-VNNI", self.avx512_vnni),
        ]
        have = [name for name, on in flags if on]
        lacking = [f"no {name}" for name, on in flags[:2] if not on]
        capped = [f"oneDNN capped at {self.onednn_max_isa}"] if self.onednn_max_isa else []
        return f"{self.isa} ({', '.join(have + lacking + capped)})"


def _cpuinfo_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _torch_cpu_query(name: str) -> Optional[bool]:
    fn = getattr(torch.cpu, name, None)  # torch's own CPU-capability queries (private API)
    if fn is None:
        return None
    try:
        return bool(fn())
    except Exception:  # pragma: no cover - a torch build without the query
        return None


@functools.cache
def cpu_capability() -> CPUCapability:
    """
    The CPU's capability: torch's own queries (``torch.backends.cpu.get_cpu_capability``,
    ``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``, ...), or the
    ``/proc/cpuinfo`` flags where a query is missing, and oneDNN's ISA cap from the
    environment. Cached for the process.
    """
    flags = _cpuinfo_flags()

    def query(torch_name: str, *cpu_flags: str) -> bool:
        found = _torch_cpu_query(torch_name)
        return found if found is not None else any(f in flags for f in cpu_flags)

    return CPUCapability(
        isa=torch.backends.cpu.get_cpu_capability(),
        avx512_bf16=query("_is_avx512_bf16_supported", "avx512_bf16"),
        amx_bf16=query("_is_amx_tile_supported", "amx_bf16"),
        avx512_vnni=query("_is_vnni_supported", "avx512_vnni"),
        amx_int8=query("_is_amx_tile_supported", "amx_int8"),
        onednn_max_isa=onednn_isa_cap(),
    )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` executes bfloat16 natively (a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 / AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_capability().native_bf16
    return False


def _check_name(name: str, key: str) -> None:
    if name not in PRECISIONS and name not in ("float32", "bfloat16", "float16", "half"):
        raise ValueError(f"{key} must be one of {PRECISIONS}, got {name!r}")


def resolve_precision(name: str, device: torch.device, key: str) -> str:
    """
    The precision ``name`` (the value of config ``key``) runs in on ``device``: "" (fp32),
    "bf16" or "fp16". ``"auto"`` gives bf16 where :func:`native_bf16` holds and fp32
    elsewhere (on CUDA, fp16 where the GPU has no bf16), and logs one line naming the
    device's capability and the choice. An explicit bf16 on a CPU without native bf16 is
    kept, with a warning of the slowdown to expect.
    """
    _check_name(name, key)
    device = torch.device(device)
    dtype = precision_dtype(name if name != "auto" else "", device, key)
    if name == "auto":
        if device.type == "cuda":
            chosen = "bf16" if native_bf16(device) else "fp16"
            logger.info(f"{key} 'auto' on {device}: {chosen}")
            return chosen
        if device.type != "cpu":
            return ""
        cap = cpu_capability()
        chosen = "bf16" if native_bf16(device) else ""
        logger.info(
            f"{key} 'auto': CPU {cap.describe()} -> "
            f"{'bf16 (native)' if chosen else 'fp32 (bf16 would be emulated)'}"
        )
        return chosen
    if dtype is torch.bfloat16 and device.type == "cpu" and not native_bf16(device):
        logger.warning(
            f"{key} 'bf16' on a CPU without native bf16 ({cpu_capability().describe()}): "
            f"PyTorch emulates it, expect {EMULATED_BF16_SLOWDOWN} slower than fp32. "
            f"Use 'auto' (or fp32) on this CPU."
        )
    if dtype is None:
        return ""
    return "bf16" if dtype is torch.bfloat16 else "fp16"


def precision_dtype(
    name: str, device: torch.device, key: str = "MODEL.FCOS.INFERENCE_PRECISION"
) -> Optional[torch.dtype]:
    """
    The autocast dtype of a resolved precision name ("" / "fp32", "bf16", "fp16") on
    ``device`` (None: fp32). ``"auto"`` must be resolved first (:func:`resolve_precision`).
    """
    if name in ("", "fp32", "float32"):
        return None
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    if name in ("fp16", "float16", "half"):
        if torch.device(device).type == "cpu":
            raise ValueError(f"{key} fp16 needs a GPU; use bf16 (or auto) on the CPU")
        return torch.float16
    raise ValueError(f"{key} must be '', 'bf16', 'fp16' or 'auto', got {name!r}")
