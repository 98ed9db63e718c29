"""Sections 2 and 3: a training step beside torchvision's, and the FCOS-specific share of
training and inference time."""

import copy
from typing import Dict

import torch

from fcos_d2.modeling.losses import fcos_losses
from fcos_d2.modeling.meta_arch import cat_levels
from fcos_d2.reference import fcos_d2_twin

from .common import Context, image, timeit, timeit_interleaved, training_inputs
from .registry import section


def training_section(tv, ours, repeats, ours_bf16=None, size=512, n_boxes=10) -> Dict[str, float]:
    """
    Seconds per SGD step of torchvision and fcos-d2 in fp32 (and, given ``ours_bf16``,
    fcos-d2 with bf16 autocast as SOLVER.AMP.ENABLED trains on the CPU), interleaved.
    """
    images, targets, inputs = training_inputs(size=size, n_boxes=n_boxes)
    tv.transform.min_size = (size,)
    tv.transform.max_size = size

    def sgd_step(model, run):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

        def step():
            losses = run(model)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        return step

    steps = {
        "torchvision_s": sgd_step(tv, lambda m: m([im / 255.0 for im in images], targets)),
        "fcos_d2_s": sgd_step(ours, lambda m: m(inputs)),
    }
    if ours_bf16 is not None:
        steps["fcos_d2_bf16_s"] = sgd_step(ours_bf16, lambda m: m(inputs))
    times = timeit_interleaved(steps, repeats, warmup=2)
    print("  " + ", ".join(f"{k[:-2]} {v:.3f} s/step" for k, v in times.items()))
    return times


@section("train", "2", "training step (batch 2, 512x512, 10 boxes/image)", key="train_step")
def run_training(ctx: Context) -> Dict[str, float]:
    """Seconds per training step (batch 2, 512x512, 10 boxes per image, forward + backward +
    SGD) of torchvision and fcos-d2 in fp32, and fcos-d2 with bf16 autocast
    (SOLVER.AMP.ENABLED on the CPU). The models trained are copies."""
    tv, ours = ctx.trainable_copies()
    amp, _ = fcos_d2_twin(
        tv, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.CPU_PRECISION", ctx.precision
    )
    ctx.ran["train_step_bf16"] = amp.train_precision or "fp32"
    size, boxes = (128, 3) if ctx.smoke else (512, 10)
    tr = training_section(tv, ours, ctx.repeats, ours_bf16=amp, size=size, n_boxes=boxes)
    ctx.ratios["train_step"] = tr["torchvision_s"] / tr["fcos_d2_s"]
    ctx.ratios["train_step_bf16"] = tr["torchvision_s"] / tr["fcos_d2_bf16_s"]
    return tr


def fcos_share_section(ours, repeats, train_size=512, infer_size=(800, 1333)) -> Dict[str, float]:
    """Time of the FCOS-specific parts inside one training step and one inference."""
    _, _, inputs = training_inputs(size=train_size)
    ours.train()
    images = ours.preprocess_image(inputs)
    features = ours.backbone(images.tensor)
    features = [features[f] for f in ours.head_in_features]
    preds = ours.head(features)
    gt = [x["instances"] for x in inputs]
    leaves = [cat_levels(p).detach().requires_grad_() for p in preds]

    def fcos_train_part():
        targets = ours.assigner(
            ours.locations(features, images.tensor.shape[-2:]), ours.strides, gt
        )
        losses = fcos_losses(
            leaves[0],
            leaves[1],
            leaves[2].squeeze(2),
            targets.labels,
            targets.reg_targets,
            **ours.loss_kwargs,
        )
        sum(losses.values()).backward()

    t_train_part = timeit(fcos_train_part, repeats, warmup=1)

    def full_step():
        losses = ours(inputs)
        sum(losses.values()).backward()

    t_step = timeit(full_step, repeats, warmup=1)

    ours.eval()
    h, w = infer_size
    inp = [{"image": image(h, w), "height": h, "width": w}]
    with torch.no_grad():
        images = ours.preprocess_image(inp)
        feats = ours.backbone(images.tensor)
        feats = [feats[f] for f in ours.head_in_features]
        logits, box_reg, ctr = ours.head(feats)

        def fcos_infer_part():
            # Locations, decoding and NMS: the meta-architecture's own step after the head.
            ours.forward_inference(images, feats, (logits, box_reg, ctr))

        t_infer_part = timeit(fcos_infer_part, repeats, warmup=1)
        t_infer = timeit(lambda: ours(inp), repeats, warmup=1)
    share = {
        "train_fcos_s": t_train_part,
        "train_step_s": t_step,
        "train_share": t_train_part / t_step,
        "inference_fcos_s": t_infer_part,
        "inference_s": t_infer,
        "inference_share": t_infer_part / t_infer,
    }
    print(
        f"  training: {t_train_part * 1e3:.1f} ms of {t_step * 1e3:.0f} ms "
        f"({100 * share['train_share']:.1f}%); inference {h}x{w}: "
        f"{t_infer_part * 1e3:.1f} ms of {t_infer * 1e3:.0f} ms "
        f"({100 * share['inference_share']:.1f}%)"
    )
    return share


@section("share", "3", "FCOS-specific share", key="fcos_specific")
def run_share(ctx: Context) -> Dict[str, float]:
    """FCOS-specific time (locations + assignment + losses; decoding + NMS) as a share of a
    training step (batch 2, 512x512) and of an inference at 800x1333, on an untrained copy
    of the twin."""
    ours = copy.deepcopy(ctx.ours)
    if ctx.smoke:
        return fcos_share_section(ours, ctx.repeats, train_size=128, infer_size=(128, 160))
    return fcos_share_section(ours, ctx.repeats)
