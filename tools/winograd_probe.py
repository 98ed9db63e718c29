"""
Probe: would Winograd F(4x4, 3x3) convolutions make the exported fp32 head faster?

One 256 -> 256 3x3 convolution of the FCOS head at P3 of an 800x1333 image (1 x 256 x
100 x 168), run directly and as Winograd F(4x4, 3x3) written in plain tensor ops (input
transform as a 6x6 stride-4 grouped convolution, 36 batched GEMMs, output transform as a
GEMM and a pixel shuffle), in PyTorch eager and in OpenVINO f32 through ONNX, on the same
threads. Prints the times and the largest difference from the direct convolution.

    .venv/bin/python tools/winograd_probe.py [--threads 2]
"""

import argparse
import os
import tempfile
import time
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Lavin & Gray's F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2, infinity.
B_T = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


class WinogradConv3x3(nn.Module):
    """A stride-1, padding-1 3x3 convolution computed as Winograd F(4x4, 3x3).
    (1, C, H, W) -> (1, O, H, W)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (B_T, G, A_T))
        w = conv.weight.detach().double()
        out_ch, in_ch = w.shape[:2]
        u = torch.einsum("ak,oikl,bl->aboi", g, w, g).reshape(36, out_ch, in_ch)
        k_in = torch.einsum("ak,bl->abkl", bt, bt).reshape(36, 1, 6, 6).repeat(in_ch, 1, 1, 1)
        a_out = torch.einsum("ia,jb->ijab", at, at).reshape(16, 36)
        self.register_buffer("u", u.float())
        self.register_buffer("k_in", k_in.float())
        self.register_buffer("a_out", a_out.float())
        self.register_buffer("bias", conv.bias.detach().reshape(1, out_ch, 1, 1))
        self.out_ch = out_ch

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        th, tw = (h + 3) // 4, (w + 3) // 4
        x = F.pad(x, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
        t = F.conv2d(x, self.k_in, stride=4, groups=c)  # (1, C * 36, th, tw)
        t = t.reshape(c, 36, th * tw).permute(1, 0, 2)  # (36, C, tiles)
        m = torch.matmul(self.u, t)  # (36, O, tiles)
        y = torch.matmul(self.a_out, m.reshape(36, -1))  # (16, O * tiles)
        y = y.reshape(4, 4, self.out_ch, th, tw).permute(2, 3, 0, 4, 1)
        y = y.reshape(1, self.out_ch, 4 * th, 4 * tw)
        return y[:, :, :h, :w] + self.bias


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    conv = nn.Conv2d(256, 256, 3, padding=1).eval()
    wino = WinogradConv3x3(conv).eval()
    x = torch.randn(1, 256, 100, 168)
    out: Dict[str, float] = {}
    with torch.no_grad():
        ref = conv(x)
        out["max_abs_diff"] = (wino(x) - ref).abs().max().item()
        out["max_abs_output"] = ref.abs().max().item()
        for name, m in (("direct", conv), ("winograd", wino)):
            out[f"torch_{name}_ms"] = 1e3 * best_of(lambda m=m: m(x), args.repeats)
    import openvino as ov

    core = ov.Core()
    folder = tempfile.mkdtemp(prefix="winograd_probe_")
    xn = x.numpy()
    for name, m in (("direct", conv), ("winograd", wino)):
        path = os.path.join(folder, f"{name}.onnx")
        torch.onnx.export(m, (x,), path, opset_version=17, dynamo=False, input_names=["x"])
        compiled = core.compile_model(
            core.read_model(path),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads},
        )
        out[f"openvino_{name}_diff"] = float(np.abs(compiled([xn])[0] - ref.numpy()).max())
        out[f"openvino_{name}_ms"] = 1e3 * best_of(lambda c=compiled: c([xn]), args.repeats)
    for k, v in out.items():
        print(f"{k}: {v:.4g}")
    return out


if __name__ == "__main__":
    main()
