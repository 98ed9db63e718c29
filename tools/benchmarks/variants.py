"""Section 11: FCOS-RT inference beside FCOS_R50_1x."""

from typing import Dict

import torch

from .common import Context, config_model, image, timeit_interleaved
from .registry import section


@section(
    "rt",
    "11",
    "FCOS-RT inference at 512 beside FCOS_R50_1x at 800x1333 (images/s, fp32)",
    key="fcos_rt_inference",
)
def run(ctx: Context) -> Dict[str, float]:
    """
    images/s of FCOS-RT (configs/FCOS_RT_R50_4x.yaml: P3-P5, BN head folded at inference)
    on a 512x683 image (COCO's 4:3 at its test size) and of FCOS_R50_1x on 800x1333, fp32,
    interleaved; FCOS-RT also with its head BatchNorm left unfolded.
    """
    rt_size, r50_size = ((128, 160), (128, 160)) if ctx.smoke else ((512, 683), (800, 1333))
    cases = {
        "fcos_rt_512": (config_model("FCOS_RT_R50_4x.yaml")[0], rt_size),
        "fcos_rt_512_head_bn_unfolded": (
            config_model("FCOS_RT_R50_4x.yaml", "MODEL.FCOS.FOLD_FROZEN_BN", "False")[0],
            rt_size,
        ),
        "fcos_r50_1x_800": (config_model("FCOS_R50_1x.yaml")[0], r50_size),
    }
    fns = {}
    for name, (model, (h, w)) in cases.items():
        inputs = [{"image": image(h, w), "height": h, "width": w}]
        fns[name] = lambda model=model, inputs=inputs: model(inputs)
    with torch.no_grad():
        row = {name: 1.0 / t for name, t in timeit_interleaved(fns, ctx.repeats).items()}
    row["rt_speedup"] = row["fcos_rt_512"] / row["fcos_r50_1x_800"]
    row["head_bn_fold_speedup"] = row["fcos_rt_512"] / row["fcos_rt_512_head_bn_unfolded"]
    print(
        "  "
        + ", ".join(
            f"{k} {v:.3f}" + (" img/s" if "speedup" not in k else "x") for k, v in row.items()
        )
    )
    return row
