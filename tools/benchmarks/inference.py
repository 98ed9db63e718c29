"""Section 1: eager inference of fcos-d2 against torchvision's fcos_resnet50_fpn."""

from typing import Dict

import torch

from .common import Context, detections_agree, image, timeit_interleaved
from .registry import section


def inference_section(tv, twins, sizes, repeats) -> Dict[str, dict]:
    """images/s of torchvision and each fcos-d2 twin at each (h, w), interleaved, and
    whether the fp32 twin's detections agree with torchvision's."""
    results = {}
    for h, w in sizes:
        img = image(h, w)
        tv.transform.min_size = (min(h, w),)
        tv.transform.max_size = max(h, w)
        inputs = [{"image": img, "height": h, "width": w}]
        fns = {"torchvision_fp32": lambda: tv([img / 255.0])}  # noqa: B023
        for name, model in twins.items():
            fns[name] = lambda model=model: model(inputs)  # noqa: B023
        with torch.no_grad():
            row = {name: 1.0 / t for name, t in timeit_interleaved(fns, repeats).items()}
            tv_out = fns["torchvision_fp32"]()
            model, fn = twins["fcos_d2_fp32"], fns["fcos_d2_fp32"]
            # The twins place locations as torchvision does (MODEL.FCOS.LOCATION_STRIDE of
            # the torchvision compat config); the paper's strides for comparison.
            row["agreement"] = detections_agree(tv_out, fn())
            saved = model.postprocessing
            model.postprocessing = saved.replace(location_stride="level")
            try:
                paper = detections_agree(tv_out, fn())
            finally:
                model.postprocessing = saved
            row["agreement"]["max_box_err_with_paper_strides"] = paper["max_box_err"]
        results[f"{h}x{w}"] = row
        print(
            f"  {h}x{w}: "
            + ", ".join(f"{k} {v:.3f} img/s" for k, v in row.items() if isinstance(v, float))
        )
        print(f"    detections agree (torchvision's level strides): {row['agreement']}")
    return results


@section("inference", "1", "inference (images/s)", key="inference")
def run(ctx: Context) -> Dict[str, dict]:
    """
    images/s of fcos-d2 and torchvision's fcos_resnet50_fpn (same architecture, converted
    weights, fp32) at 800x1333 and 512x512, their ratio and whether their detections agree;
    fcos-d2 also in bf16 (autocast) and without its speed-ups. torchvision places the
    locations of a level at multiples of (padded size // grid size), e.g. 800 // 13 = 61 px
    for P6 at 800x1333 where the stride is 64, which moves its P6/P7 boxes; the twins do the
    same (MODEL.FCOS.LOCATION_STRIDE of the torchvision compat config), and the box
    difference with the paper's strides is reported beside.
    """
    sizes = [(128, 160)] if ctx.smoke else [(800, 1333), (512, 512)]
    twins = {"fcos_d2_fp32": ctx.ours, "fcos_d2_bf16": ctx.bf16, "fcos_d2_fp32_plain": ctx.plain}
    inf = inference_section(ctx.tv, twins, sizes, ctx.repeats)
    for key, row in inf.items():
        ctx.ratios[f"inference_{key}"] = row["fcos_d2_fp32"] / row["torchvision_fp32"]
        ctx.ratios[f"inference_{key}_bf16"] = row["fcos_d2_bf16"] / row["torchvision_fp32"]
    return inf
