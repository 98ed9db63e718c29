"""FCOS inference against hand-computed cases and a plain per-image, per-level reference."""

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torchvision.ops import batched_nms

import fcos_d2
from fcos_d2.modeling.inference import (
    clip_boxes,
    decode_boxes,
    fcos_inference,
)
from fcos_d2.modeling.locations import compute_locations

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def logit(p):
    return math.log(p / (1 - p))


def test_decode_boxes_hand_computed():
    locations = torch.tensor([[10.0, 20.0], [0.0, 0.0], [4.0, 4.0]])
    ltrb = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [4.0, 0.0, 0.0, 8.0]])
    expected = torch.tensor(
        [[9.0, 18.0, 13.0, 24.0], [-0.5, -0.5, 0.5, 0.5], [0.0, 4.0, 4.0, 12.0]]
    )
    torch.testing.assert_close(decode_boxes(locations, ltrb), expected, rtol=0, atol=0)


# ------------------------------------------------------ fcos_inference vs reference


def reference_inference(
    logits,
    box_reg,
    centerness,
    level_locations,
    image_sizes,
    *,
    score_thresh,
    topk_candidates,
    nms_thresh,
    max_detections,
    thresh_with_centerness,
    sqrt_score,
):
    """Loops over images and levels. Returns per image (boxes, scores, classes, #after NMS)."""
    results = []
    for i, (h, w) in enumerate(image_sizes):
        all_boxes, all_scores, all_classes = [], [], []
        start = 0
        for locs in level_locations:
            end = start + len(locs)
            prob = logits[i, start:end].sigmoid()
            score = prob * centerness[i, start:end].sigmoid()[:, None]
            if sqrt_score:
                score = score.sqrt()
            passed = (score if thresh_with_centerness else prob) > score_thresh
            loc_idx, cls_idx = passed.nonzero(as_tuple=True)
            cand = score[loc_idx, cls_idx]
            top = torch.topk(cand, min(topk_candidates, len(cand))).indices
            loc_idx, cls_idx, cand = loc_idx[top], cls_idx[top], cand[top]
            points = locs[loc_idx]
            ltrb = box_reg[i, start:end][loc_idx]
            boxes = torch.stack(
                [
                    (points[:, 0] - ltrb[:, 0]).clamp(0, w),
                    (points[:, 1] - ltrb[:, 1]).clamp(0, h),
                    (points[:, 0] + ltrb[:, 2]).clamp(0, w),
                    (points[:, 1] + ltrb[:, 3]).clamp(0, h),
                ],
                dim=1,
            )
            all_boxes.append(boxes)
            all_scores.append(cand)
            all_classes.append(cls_idx)
            start = end
        boxes, scores, classes = map(torch.cat, (all_boxes, all_scores, all_classes))
        keep = batched_nms(boxes, scores, classes, nms_thresh)  # sorted by decreasing score
        num_after_nms = len(keep)
        keep = keep[:max_detections]
        results.append((boxes[keep], scores[keep], classes[keep], num_after_nms))
    return results


STRIDES = (8, 16, 32)
PADDED = (64, 96)
IMAGE_SIZES = [(64, 96), (50, 70)]
NUM_CLASSES = 4


def random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(PADDED[0] // s, PADDED[1] // s) for s in STRIDES]
    level_locations = compute_locations(shapes, STRIDES)
    num_locations = sum(len(x) for x in level_locations)
    n = len(IMAGE_SIZES)
    logits = torch.randn(n, num_locations, NUM_CLASSES, generator=g) * 2 - 3
    centerness = torch.randn(n, num_locations, generator=g) * 2
    box_reg = torch.rand(n, num_locations, 4, generator=g) * 40 + 1
    return logits, box_reg, centerness, level_locations


SETTINGS = [
    # thresh, topk, nms, max_det, thresh_with_centerness, sqrt_score
    (0.05, 1000, 0.6, 100, False, False),
    (0.05, 10, 0.6, 100, False, False),  # top-k binds on every level with candidates
    (0.1, 15, 0.5, 12, False, True),  # max_detections binds
    (0.05, 1000, 0.3, 100, True, False),
    (0.2, 8, 0.7, 10, True, True),
    (0.3, 1000, 0.5, 5, False, False),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("setting", SETTINGS)
def test_fcos_inference_matches_reference(seed, setting):
    thresh, topk, nms, max_det, twc, sqrt_score = setting
    kwargs = dict(
        score_thresh=thresh,
        topk_candidates=topk,
        nms_thresh=nms,
        max_detections=max_det,
        thresh_with_centerness=twc,
        sqrt_score=sqrt_score,
    )
    logits, box_reg, centerness, level_locations = random_batch(seed)
    locations = torch.cat(level_locations)
    level_sizes = [len(x) for x in level_locations]
    results = fcos_inference(
        logits, box_reg, centerness, locations, level_sizes, IMAGE_SIZES, **kwargs
    )
    expected = reference_inference(
        logits, box_reg, centerness, level_locations, IMAGE_SIZES, **kwargs
    )
    assert len(results) == len(IMAGE_SIZES)
    for inst, (e_boxes, e_scores, e_classes, num_after_nms), size in zip(
        results, expected, IMAGE_SIZES
    ):
        assert inst.image_size == size
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert len(e_scores) > 0  # the setting is not vacuous
        if max_det < 100:
            assert num_after_nms > max_det  # max_detections binds
        assert len(set(e_scores.tolist())) == len(e_scores)
        # Returned in decreasing score order.
        assert (inst.scores[1:] <= inst.scores[:-1]).all()
        order = torch.argsort(inst.scores, descending=True)
        e_order = torch.argsort(e_scores, descending=True)
        torch.testing.assert_close(inst.scores[order], e_scores[e_order])
        torch.testing.assert_close(inst.pred_boxes.tensor[order], e_boxes[e_order])
        assert inst.pred_classes[order].tolist() == e_classes[e_order].tolist()
        assert inst.pred_classes.dtype == torch.int64


def test_topk_candidates_binds_in_random_batch():
    # Guards the "top-k binds" setting above: the first level has more candidates than 10.
    logits, _, _, level_locations = random_batch(0)
    n0 = len(level_locations[0])
    assert int((logits[:, :n0].sigmoid() > 0.05).sum(dim=(1, 2)).min()) > 10


# ------------------------------------------------------------------ hand-made case

# One image of (h, w) = (30, 44) in a padded 32 x 48 batch, two levels:
# level 0, stride 8, 4 x 6 locations at (4 + 8x, 4 + 8y);
# level 1, stride 16, 2 x 3 locations at (8 + 16x, 8 + 16y). Two classes.
HAND_SHAPES = [(4, 6), (2, 3)]
HAND_STRIDES = [8, 16]


def hand_case():
    level_locations = compute_locations(HAND_SHAPES, HAND_STRIDES)
    locations = torch.cat(level_locations)
    level_sizes = [24, 6]
    logits = torch.full((1, 30, 2), -10.0)  # prob 4.5e-5: nothing passes by default
    centerness = torch.zeros(1, 30)  # sigmoid 0.5
    box_reg = torch.ones(1, 30, 4)

    def at(level, y, x):  # row-major within a level, levels concatenated
        base, width = (0, 6) if level == 0 else (24, 3)
        return base + y * width + x

    # A: level 0 (x=1, y=1) -> point (12, 12), class 0, p=0.9, c=0.5, box (8, 8, 16, 16).
    a = at(0, 1, 1)
    assert locations[a].tolist() == [12.0, 12.0]
    logits[0, a, 0] = logit(0.9)
    box_reg[0, a] = torch.tensor([4.0, 4.0, 4.0, 4.0])
    # C: same location and box as A, class 1, p=0.7: a different class, not suppressed.
    logits[0, a, 1] = logit(0.7)
    # B: level 1 (0, 0) -> point (8, 8), class 0, p=0.8, c=0.5, same box as A: suppressed.
    b = at(1, 0, 0)
    assert locations[b].tolist() == [8.0, 8.0]
    logits[0, b, 0] = logit(0.8)
    box_reg[0, b] = torch.tensor([0.0, 0.0, 8.0, 8.0])
    # D: level 1 (x=2, y=1) -> point (40, 24), class 1, p=0.75, c=0.8,
    # box (30, 4, 50, 44) clipped to (30, 4, 44, 30).
    d = at(1, 1, 2)
    assert locations[d].tolist() == [40.0, 24.0]
    logits[0, d, 1] = logit(0.75)
    centerness[0, d] = logit(0.8)
    box_reg[0, d] = torch.tensor([10.0, 20.0, 10.0, 20.0])
    # E: level 0 (0, 0) -> point (4, 4), class 1, p=0.04 (below the threshold), c=0.5,
    # box (3, 3, 5, 5).
    e = at(0, 0, 0)
    logits[0, e, 1] = logit(0.04)
    # F: level 0 (x=5, y=3) -> point (44, 28), class 0, p=0.06 but c=0.1: score 0.006,
    # box (43, 27, 45, 29) clipped to (43, 27, 44, 29).
    f = at(0, 3, 5)
    assert locations[f].tolist() == [44.0, 28.0]
    logits[0, f, 0] = logit(0.06)
    centerness[0, f] = logit(0.1)
    return logits, box_reg, centerness, locations, level_sizes


HAND_D = (0.75 * 0.8, [30.0, 4.0, 44.0, 30.0], 1)
HAND_A = (0.9 * 0.5, [8.0, 8.0, 16.0, 16.0], 0)
HAND_C = (0.7 * 0.5, [8.0, 8.0, 16.0, 16.0], 1)
HAND_E = (0.04 * 0.5, [3.0, 3.0, 5.0, 5.0], 1)
HAND_F = (0.06 * 0.1, [43.0, 27.0, 44.0, 29.0], 0)


@pytest.mark.parametrize(
    "thresh_with_centerness, sqrt_score, expected",
    [
        (False, False, [HAND_D, HAND_A, HAND_C, HAND_F]),
        (False, True, [HAND_D, HAND_A, HAND_C, HAND_F]),
        # Thresholds on the final score: F's 0.006 and E's 0.02 are below 0.05, but their
        # square roots 0.077 and 0.141 are above it.
        (True, False, [HAND_D, HAND_A, HAND_C]),
        (True, True, [HAND_D, HAND_A, HAND_C, HAND_E, HAND_F]),
    ],
)
def test_fcos_inference_hand_made(thresh_with_centerness, sqrt_score, expected):
    logits, box_reg, centerness, locations, level_sizes = hand_case()
    (inst,) = fcos_inference(
        logits,
        box_reg,
        centerness,
        locations,
        level_sizes,
        [(30, 44)],
        score_thresh=0.05,
        nms_thresh=0.6,
        thresh_with_centerness=thresh_with_centerness,
        sqrt_score=sqrt_score,
    )
    assert inst.image_size == (30, 44)
    scores = [s for s, _, _ in expected]
    if sqrt_score:
        scores = [math.sqrt(s) for s in scores]
    torch.testing.assert_close(inst.scores, torch.tensor(scores))
    torch.testing.assert_close(
        inst.pred_boxes.tensor, torch.tensor([b for _, b, _ in expected]), rtol=0, atol=1e-5
    )
    assert inst.pred_classes.tolist() == [c for _, _, c in expected]


def test_fcos_inference_hand_made_max_detections_and_nms_off():
    logits, box_reg, centerness, locations, level_sizes = hand_case()
    (inst,) = fcos_inference(
        logits, box_reg, centerness, locations, level_sizes, [(30, 44)], max_detections=2
    )
    torch.testing.assert_close(inst.scores, torch.tensor([HAND_D[0], HAND_A[0]]))
    # With an IoU threshold of 1.0 identical boxes are not suppressed: B comes back.
    (inst,) = fcos_inference(
        logits, box_reg, centerness, locations, level_sizes, [(30, 44)], nms_thresh=1.0
    )
    torch.testing.assert_close(
        inst.scores, torch.tensor([HAND_D[0], HAND_A[0], 0.8 * 0.5, HAND_C[0], HAND_F[0]])
    )
    assert inst.pred_classes.tolist() == [1, 0, 0, 1, 0]


def test_fcos_inference_no_candidates():
    logits, box_reg, centerness, level_locations = random_batch(0)
    logits = torch.full_like(logits, -10.0)
    locations = torch.cat(level_locations)
    level_sizes = [len(x) for x in level_locations]
    results = fcos_inference(logits, box_reg, centerness, locations, level_sizes, IMAGE_SIZES)
    assert len(results) == 2
    for inst, size in zip(results, IMAGE_SIZES):
        assert inst.image_size == size
        assert len(inst) == 0
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert inst.pred_boxes.tensor.shape == (0, 4)
        assert inst.scores.shape == (0,)
        assert inst.pred_classes.shape == (0,)
        assert inst.pred_classes.dtype == torch.int64


def test_fcos_inference_first_image_empty_second_not():
    logits, box_reg, centerness, level_locations = random_batch(1)
    logits[0] = -10.0
    locations = torch.cat(level_locations)
    level_sizes = [len(x) for x in level_locations]
    kwargs = dict(
        score_thresh=0.05,
        topk_candidates=20,
        nms_thresh=0.5,
        max_detections=9,
        thresh_with_centerness=False,
        sqrt_score=False,
    )
    first, second = fcos_inference(
        logits, box_reg, centerness, locations, level_sizes, IMAGE_SIZES, **kwargs
    )
    _, (e_boxes, e_scores, e_classes, _) = reference_inference(
        logits, box_reg, centerness, level_locations, IMAGE_SIZES, **kwargs
    )
    assert len(first) == 0 and first.image_size == IMAGE_SIZES[0]
    assert len(second) == 9 and second.image_size == IMAGE_SIZES[1]
    torch.testing.assert_close(second.scores, e_scores)
    torch.testing.assert_close(second.pred_boxes.tensor, e_boxes)
    assert second.pred_classes.tolist() == e_classes.tolist()


# ------------------------------------------------------------- full meta-architecture


def small_cfg(**fcos):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / "Base-FCOS.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    for key, value in fcos.items():
        setattr(cfg.MODEL.FCOS, key, value)
    return cfg


def build_small_model(**fcos):
    torch.manual_seed(0)
    model = build_model(small_cfg(**fcos))
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(3.0)  # class prob ~0.95 everywhere
    return model.eval()


def test_meta_arch_inference_output():
    model = build_small_model()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 128, 160, generator=g) * 255
    with torch.no_grad():
        (scaled,) = model([{"image": image, "height": 256, "width": 320}])
        (native,) = model([{"image": image}])
    inst = scaled["instances"]
    assert set(scaled) == {"instances"}
    assert inst.image_size == (256, 320)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())
    # Hundreds of locations pass the threshold with small, disjoint boxes: the cap binds.
    assert len(inst) == 7
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 256).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (inst.scores[1:] <= inst.scores[:-1]).all()
    assert ((inst.scores > 0) & (inst.scores <= 1)).all()
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all()
    # Rescaling to the requested size: same detections, boxes x2.
    ref = native["instances"]
    assert ref.image_size == (128, 160)
    torch.testing.assert_close(inst.scores, ref.scores)
    assert inst.pred_classes.tolist() == ref.pred_classes.tolist()
    torch.testing.assert_close(boxes, ref.pred_boxes.tensor * 2)


def test_meta_arch_threshold_one_gives_no_detections():
    model = build_small_model(SCORE_THRESH_TEST=1.0)
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        outputs = model(
            [
                {"image": image, "height": 256, "width": 320},
                {"image": image[:, :96, :128], "height": 96, "width": 128},
            ]
        )
    assert len(outputs) == 2
    for out, size in zip(outputs, [(256, 320), (96, 128)]):
        inst = out["instances"]
        assert inst.image_size == size
        assert len(inst) == 0
        assert inst.pred_boxes.tensor.shape == (0, 4)


def test_clip_boxes_modes():
    boxes = torch.tensor([[-1.0, -2.0, 5.0, 7.0], [1.0, 1.0, 2.0, 2.0]])
    sizes = torch.tensor([[4.0, 6.0], [4.0, 6.0]])  # (h, w)
    torch.testing.assert_close(
        clip_boxes(boxes, sizes, "image"), torch.tensor([[0.0, 0.0, 5.0, 4.0], [1, 1, 2, 2]])
    )
    torch.testing.assert_close(
        clip_boxes(boxes, sizes, "image_minus_one"),
        torch.tensor([[0.0, 0.0, 5.0, 3.0], [1, 1, 2, 2]]),
    )
    assert torch.equal(clip_boxes(boxes, sizes, ""), boxes)
    with pytest.raises(ValueError, match="CLIP_BOXES_TEST"):
        clip_boxes(boxes, sizes, "w-1")


def test_nms_legacy_plus_one():
    # Boxes [0, 0, 2, 2] and [1, 0, 3, 2] of one class: IoU 2 / 6 = 1/3; with widths + 1
    # (maskrcnn-benchmark): 6 / (9 + 9 - 6) = 1/2. At an NMS threshold of 0.4 the legacy
    # IoU suppresses the second box, the plain one keeps both.
    locations = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    logits = torch.tensor([[[logit(0.9)], [logit(0.8)]]])
    box_reg = torch.ones(1, 2, 4)
    centerness = torch.zeros(1, 2)
    kwargs = dict(nms_thresh=0.4, clip="")
    args = (logits, box_reg, centerness, locations, [2], [(2, 3)])
    plain = fcos_inference(*args, **kwargs)[0]
    legacy = fcos_inference(*args, nms_plus_one=True, **kwargs)[0]
    assert plain.pred_boxes.tensor.tolist() == [[0, 0, 2, 2], [1, 0, 3, 2]]
    assert legacy.pred_boxes.tensor.tolist() == [[0, 0, 2, 2]]
