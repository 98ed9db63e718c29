"""FCOS losses against hand-computed values and torchvision's reference ops."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

import fcos_d2
from fcos_d2.modeling.losses import fcos_losses, iou_loss


def test_iou_loss_hand_computed():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    # Row 0: a 2x2 box inside a 4x4 box around the same point: IoU = 4 / 16.
    # Row 1: identical boxes: IoU = 1.
    per_box = iou_loss(pred, target, "iou", reduction="none")
    torch.testing.assert_close(per_box, torch.tensor([-math.log(0.25), 0.0]))
    torch.testing.assert_close(
        iou_loss(pred, target, "linear_iou", reduction="none"), torch.tensor([0.75, 0.0])
    )
    # The enclosing box is the 4x4 box itself, so GIoU = IoU.
    torch.testing.assert_close(
        iou_loss(pred, target, "giou", reduction="none"), torch.tensor([0.75, 0.0])
    )
    # Disjoint extents: pred (0,1,4,1) and target (4,1,0,1) around the same point share
    # only the point's column -> intersection 0, union 8 + 8, enclosing 8 x 2 = 16.
    p = torch.tensor([[0.0, 1.0, 4.0, 1.0]])
    t = torch.tensor([[4.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(iou_loss(p, t, "giou"), torch.tensor(1.0))
    assert iou_loss(p, t, "iou") > 10  # -log(eps)
    torch.testing.assert_close(
        iou_loss(pred, target, "iou", weight=torch.tensor([2.0, 5.0])),
        torch.tensor(-2 * math.log(0.25)),
    )
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        iou_loss(pred, target, "l1")


def test_iou_loss_smoothing_hand_computed():
    # A 2x2 box in a 4x4 one: I = 4, U = 16. With the sources' +1: (4 + 1) / (16 + 1); in
    # stride units (stride 2: areas / 4) the +1 is 4 px^2: (1 + 1) / (4 + 1).
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    per_box = iou_loss(pred, target, "linear_iou", reduction="none", smooth=1.0)
    torch.testing.assert_close(per_box, torch.tensor([1 - 5 / 17, 1 - 5 / 17]))
    per_box = iou_loss(pred, target, "iou", reduction="none", smooth=torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(per_box, torch.tensor([-math.log(5 / 17), -math.log(2 / 5)]))
    # GIoU: the smoothed IoU minus (C - U) / C with the unsmoothed union; C = U here.
    per_box = iou_loss(pred, target, "giou", reduction="none", smooth=1.0)
    torch.testing.assert_close(per_box, torch.tensor([1 - 5 / 17, 1 - 5 / 17]))
    p = torch.tensor([[0.0, 1.0, 4.0, 1.0]])  # disjoint extents: I = 0, U = 16, C = 16
    t = torch.tensor([[4.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(iou_loss(p, t, "giou", smooth=1.0), torch.tensor(1 - 1 / 17))


def test_iou_losses_match_torchvision_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(200, 2, generator=g) * 100
    pred = torch.rand(200, 4, generator=g) * 50 + 0.5
    target = torch.rand(200, 4, generator=g) * 50 + 0.5

    def boxes(ltrb):
        return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)

    ref_giou = generalized_box_iou_loss(boxes(pred), boxes(target), reduction="none")
    torch.testing.assert_close(iou_loss(pred, target, "giou", reduction="none"), ref_giou)
    ref_iou = box_iou(boxes(pred), boxes(target)).diagonal()
    torch.testing.assert_close(iou_loss(pred, target, "linear_iou", reduction="none"), 1 - ref_iou)
    torch.testing.assert_close(
        iou_loss(pred, target, "iou", reduction="none"), -torch.log(ref_iou), rtol=1e-5, atol=1e-5
    )


def test_fcos_losses_against_reference_formula():
    g = torch.Generator().manual_seed(1)
    n, num_loc, c = 2, 30, 3
    logits = torch.randn(n, num_loc, c, generator=g)
    box_reg = torch.rand(n, num_loc, 4, generator=g) * 10 + 1
    ctr = torch.randn(n, num_loc, generator=g)
    labels = torch.full((n, num_loc), c)
    labels[0, [1, 5, 7]] = torch.tensor([0, 2, 2])
    labels[1, [3]] = 1
    reg_targets = torch.rand(n, num_loc, 4, generator=g) * 10 + 1
    losses = fcos_losses(logits, box_reg, ctr, labels, reg_targets, num_classes=c)

    pos = labels < c
    num_pos = 4.0
    onehot = torch.zeros(n, num_loc, c)
    onehot[pos, labels[pos]] = 1.0
    ref_cls = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2, reduction="sum") / num_pos
    t = reg_targets[pos]
    ref_ctr_t = torch.sqrt(
        (torch.minimum(t[:, 0], t[:, 2]) / torch.maximum(t[:, 0], t[:, 2]))
        * (torch.minimum(t[:, 1], t[:, 3]) / torch.maximum(t[:, 1], t[:, 3]))
    )
    ref_loc = iou_loss(box_reg[pos], t, "iou") / num_pos
    ref_ctr = (
        torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], ref_ctr_t, reduction="sum")
        / num_pos
    )
    torch.testing.assert_close(losses["loss_fcos_cls"], ref_cls)
    torch.testing.assert_close(losses["loss_fcos_loc"], ref_loc)
    torch.testing.assert_close(losses["loss_fcos_ctr"], ref_ctr)

    # Centerness-weighted box loss is normalised by the sum of the weights.
    weighted = fcos_losses(
        logits,
        box_reg,
        ctr,
        labels,
        reg_targets,
        num_classes=c,
        loc_loss_type="giou",
        loc_weight_by_centerness=True,
        loss_weights={"loss_fcos_loc": 2.0},
    )
    per_box = iou_loss(box_reg[pos], t, "giou", reduction="none")
    torch.testing.assert_close(
        weighted["loss_fcos_loc"], 2.0 * (per_box * ref_ctr_t).sum() / ref_ctr_t.sum()
    )


def _small_model(**fcos_overrides):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file("configs/Base-FCOS.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FCOS.NUM_CONVS = 2
    cfg.MODEL.FCOS.NUM_CLASSES = 4
    for k, v in fcos_overrides.items():
        setattr(cfg.MODEL.FCOS, k, v)
    torch.manual_seed(0)
    return build_model(cfg).train()


def _inputs(boxes, classes, size=(128, 160)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(0))
    return [{"image": image.float(), "instances": inst}]


def test_loss_on_image_without_boxes():
    model = _small_model()
    losses = model(_inputs([], []))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_cls"] > 0
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "NORM_REG_TARGETS": True,
            "CENTERNESS_ON_REG": True,
            "CENTER_SAMPLING_RADIUS": 1.5,
            "LOC_LOSS_TYPE": "giou",
            "LOC_LOSS_WEIGHT_BY_CENTERNESS": True,
        },
    ],
)
def test_loss_with_boxes_reaches_every_head_parameter(overrides):
    model = _small_model(**overrides)
    # Boxes of sizes from 12 px to the whole image: every level (up to P7, > 512) has positives.
    # (The whole-image box is wide enough for P7 positives even with center sampling.)
    boxes = [
        [10, 10, 30, 40],
        [100, 100, 300, 260],
        [50, 50, 900, 700],
        [0, 0, 1152, 768],
        [60, 60, 72, 72],
    ]
    losses = model(_inputs(boxes, [0, 1, 2, 3, 0], size=(768, 1152)))
    assert all(v > 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    scales = [s.scale.grad for s in model.head.scales]
    assert all(g is not None and g != 0 for g in scales), scales
