"""fcos_d2/modeling/meta_arch.py wires the units: its training losses are the losses of its
pieces called by hand (locations -> assigner -> fcos_losses), returned and not stored; its
inference is fcos_inference on the same pieces, rescaled by Detectron2's detector_postprocess;
after an evaluation, training runs unfused."""

import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from fcos_d2.modeling.inference import fcos_inference
from fcos_d2.modeling.losses import fcos_losses
from fcos_d2.modeling.meta_arch import cat_levels
from helpers import ddp_batch, small_fcos_cfg


def _model():
    torch.manual_seed(0)
    cfg = small_fcos_cfg()
    cfg.MODEL.FCOS.NORM = "BN"  # the head has norms to fuse at inference
    return build_model(cfg)


def _pieces(model, batch):
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, box_reg, ctr = model.head(features)
    locations = model.locations(features, images.tensor.shape[-2:])
    return images, logits, box_reg, ctr, locations


def test_training_losses_are_the_pieces_losses_and_are_returned():
    model, batch = _model().train(), ddp_batch(2)
    losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    images, logits, box_reg, ctr, locations = _pieces(model, batch)
    targets = model.assigner(locations, model.strides, [b["instances"] for b in batch])
    want = fcos_losses(
        cat_levels(logits),
        cat_levels(box_reg),
        cat_levels(ctr).squeeze(2),
        targets.labels,
        targets.reg_targets,
        iou_smooth=model.iou_smoothing(locations),
        **model.loss_kwargs,
    )
    for name, value in want.items():
        torch.testing.assert_close(losses[name], value, msg=name)
    assert not hasattr(model, "last_losses")  # returned, not stored on the module


def test_inference_is_fcos_inference_of_the_pieces_rescaled():
    model, batch = _model(), ddp_batch(2)
    model.train()(batch)  # BatchNorm statistics move once
    model.eval()
    for b in batch:
        b["height"], b["width"] = 150, 200
    with torch.no_grad():
        images, logits, box_reg, ctr, locations = _pieces(model, batch)
        results = fcos_inference(
            cat_levels(logits),
            cat_levels(box_reg),
            cat_levels(ctr).squeeze(2),
            torch.cat(locations),
            [len(x) for x in locations],
            images.image_sizes,
            model.postprocessing.replace(score_thresh=0.0),
        )
    model.postprocessing = model.postprocessing.replace(score_thresh=0.0)
    with torch.no_grad():
        got = model(batch)
    for out, want in zip(got, results):
        want = detector_postprocess(want, 150, 200)
        inst = out["instances"]
        assert inst.image_size == (150, 200) and len(inst) == len(want) > 0
        torch.testing.assert_close(inst.scores, want.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            inst.pred_boxes.tensor, want.pred_boxes.tensor, rtol=1e-4, atol=1e-3
        )


def test_training_after_an_evaluation_uses_the_unfused_weights():
    model, batch = _model(), ddp_batch(2)
    model.train()
    first = {k: v.detach() for k, v in model(batch).items()}
    model.eval()
    with torch.no_grad():
        model(batch)  # fuses
    model.train()
    again = model(batch)
    for name, value in first.items():
        torch.testing.assert_close(again[name].detach(), value, msg=name)
