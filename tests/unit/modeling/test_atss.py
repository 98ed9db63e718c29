"""ATSS assignment against hand-computed cases and a per-location reference from the paper."""

import math
import random
from fractions import Fraction

import pytest
import torch
from detectron2.structures import Boxes, Instances

from fcos_d2.modeling.atss import ATSSAssigner, _nearest_on_grid, atss_match, grid_axes
from fcos_d2.modeling.locations import compute_locations

BG = 5


def reference_atss(levels, strides, boxes, k, anchor_scale):
    """
    The paper's Algorithm 1 with plain loops, in float64: ``levels`` are per level lists of
    (x, y) locations; returns the matched box index per location (-1 background).

    The threshold test IoU >= mean + std is evaluated exactly (fractions): with d = IoU -
    mean, d >= std  <=>  d >= 0 and d^2 >= var (unbiased variance; 0 for one candidate).
    """
    num = sum(len(lv) for lv in levels)
    best = [(-math.inf, -1)] * num
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        candidates = []  # (global index, x, y, stride)
        start = 0
        for locs, stride in zip(levels, strides):
            dist2 = [(x - cx) * (x - cx) + (y - cy) * (y - cy) for x, y in locs]
            # k nearest centres; equal distances: the location listed first.
            order = sorted(range(len(locs)), key=lambda i: (dist2[i], i))
            candidates += [(start + i, *locs[i], stride) for i in order[:k]]
            start += len(locs)
        ious = []
        for _, x, y, stride in candidates:
            half = anchor_scale * stride / 2
            iw = min(x + half, x1) - max(x - half, x0)
            ih = min(y + half, y1) - max(y - half, y0)
            inter = max(iw, 0.0) * max(ih, 0.0)
            ious.append(inter / ((x1 - x0) * (y1 - y0) + (2 * half) ** 2 - inter))
        exact = [Fraction(v) for v in ious]
        mean = sum(exact) / len(exact)
        var = sum((v - mean) ** 2 for v in exact) / (len(exact) - 1) if len(exact) > 1 else 0
        for (g, x, y, _), v, e in zip(candidates, ious, exact):
            above = e - mean >= 0 and (e - mean) ** 2 >= var
            inside = min(x - x0, y - y0, x1 - x, y1 - y) > 0.01
            if above and inside and v > best[g][0]:  # equal IoUs: the earlier box keeps it
                best[g] = (v, j)
    return [b for _, b in best]


def _instances(boxes, classes, size):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _run(shapes, strides, boxes, k=9, scale=8.0, offset=0.5, size=None):
    """ATSSAssigner's targets and the reference's matches on float32 inputs."""
    locations = compute_locations(shapes, strides, offset=offset)
    size = size or (shapes[0][0] * strides[0], shapes[0][1] * strides[0])
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    classes = [i % BG for i in range(len(boxes))]
    assigner = ATSSAssigner(num_classes=BG, topk=k, anchor_scale=scale)
    targets = assigner(locations, strides, [_instances(boxes, classes, size)])
    levels = [[tuple(p) for p in loc.double().tolist()] for loc in locations]
    expected = reference_atss(levels, strides, boxes.double().tolist(), k, scale)
    return targets, expected, torch.cat(locations)


def _positives(targets, points):
    """{(x, y): box index} of the positive locations."""
    m = targets.matched_idxs[0]
    return {tuple(int(v) for v in points[i].tolist()): int(m[i]) for i in (m >= 0).nonzero()[:, 0]}


def test_threshold_is_mean_plus_unbiased_std():
    # One level, stride 8, 8x8 locations at 4, 12, ..., 60; anchors 2 strides = 16 px wide.
    # Box [20, 20, 36, 36] (16 x 16) is centred on the location (28, 28); its 9 nearest
    # locations are x, y in {20, 28, 36} with IoUs: centre 1 (the anchor is the box),
    # 4 edge neighbours 128 / 384 = 1/3, 4 corners 64 / 448 = 1/7. mean = 61/189 = 0.323,
    # unbiased std = 0.271, threshold 0.594: only the centre is positive (the neighbours
    # also lie on the box's border, which is not inside).
    targets, expected, points = _run([(8, 8)], [8], [[20, 20, 36, 36]], k=9, scale=2.0)
    assert _positives(targets, points) == {(28, 28): 0}
    assert targets.matched_idxs[0].tolist() == expected
    assert targets.reg_targets[0][targets.matched_idxs[0] == 0].tolist() == [[8.0] * 4]
    # With k = 5 the candidates are the centre and the 4 edge neighbours (distance 8; the
    # corners are at 11.3): IoUs 1, 1/3 x 4, mean 7/15, unbiased std 0.298 (biased 0.267):
    # threshold 0.765 with either; the centre stays the only positive.
    targets, expected, points = _run([(8, 8)], [8], [[20, 20, 36, 36]], k=5, scale=2.0)
    assert _positives(targets, points) == {(28, 28): 0}
    assert targets.matched_idxs[0].tolist() == expected


def test_unbiased_std_as_in_the_official_code():
    # Box [0, 0, 14, 14] (centre (7, 7)), one level, stride 8, anchors 16 px, k = 9. The
    # candidates and their anchors' IoUs (intersection / union):
    #   (4, 4): [0, 0, 12, 12] = 144 / 308 = 0.4675
    #   (12, 4), (4, 12): 10 x 12 = 120 / 332 = 0.3614
    #   (12, 12): 100 / 352 = 0.2841
    #   (20, 4), (4, 20): 2 x 12 = 24 / 428 = 0.0561
    #   (20, 12), (12, 20): 2 x 10 = 20 / 432 = 0.0463
    #   (20, 20): 4 / 448 = 0.0089
    # mean 0.18758; unbiased std 0.17839 -> threshold 0.36596: only (4, 4) is positive.
    # (The biased std, 0.16818, would give 0.35576 and also admit (12, 4) and (4, 12),
    # which lie inside the box.)
    targets, expected, points = _run([(8, 8)], [8], [[0, 0, 14, 14]], k=9, scale=2.0)
    assert _positives(targets, points) == {(4, 4): 0}
    assert targets.matched_idxs[0].tolist() == expected


def test_equal_distances_the_first_location_is_the_candidate():
    # Box [2, 2, 14, 12], centre (8, 7): (4, 4) and (12, 4) are at d^2 = 25, then (4, 12)
    # and (12, 12) tie at d^2 = 41. With k = 3 the candidates are (4, 4), (12, 4) and the
    # first of the tied pair, (4, 12) (row-major index 8 before 9).
    loc = compute_locations([(8, 8)], [8])[0]
    xs, ys = grid_axes(loc)
    centers = torch.tensor([[8.0, 7.0]], dtype=torch.float64)
    got = _nearest_on_grid(xs.double(), ys.double(), centers, 3)
    assert got.tolist() == [[0, 1, 8]]
    # k = 4 takes both.
    assert _nearest_on_grid(xs.double(), ys.double(), centers, 4).tolist() == [[0, 1, 8, 9]]
    # A centre exactly between four locations: the 4-way tie is taken in row-major order.
    c = torch.tensor([[16.0, 16.0]], dtype=torch.float64)
    assert _nearest_on_grid(xs.double(), ys.double(), c, 2).tolist() == [[9, 10]]
    assert _nearest_on_grid(xs.double(), ys.double(), c, 3).tolist() == [[9, 10, 17]]


def test_a_level_with_fewer_than_k_locations_gives_all_of_them():
    # A 2x2 level (stride 16): 4 < 9 locations, all of them candidates, nearest first.
    loc = compute_locations([(2, 2)], [16])[0]
    xs, ys = grid_axes(loc)
    c = torch.tensor([[30.0, 2.0]], dtype=torch.float64)
    # Locations (8, 8), (24, 8), (8, 24), (24, 24); d^2 from (30, 2): 520, 72, 1000, 520.
    assert _nearest_on_grid(xs.double(), ys.double(), c, 9).tolist() == [[1, 0, 3, 2]]
    # Whole assignment on two levels, checked against the reference.
    boxes = [[20, 4, 40, 26], [0, 0, 30, 30]]
    targets, expected, _ = _run([(8, 8), (2, 2)], [8, 16], boxes, scale=2.0)
    assert targets.matched_idxs[0].tolist() == expected
    assert (targets.matched_idxs[0, 64:] >= 0).any()  # positives on the 2x2 level


def test_two_boxes_on_one_location_highest_iou_wins():
    # One level, stride 8, anchors 16 px. A = [20, 20, 36, 36] is the anchor of (28, 28)
    # (IoU 1, positive, see above). B = [18, 18, 38, 38] (20 x 20, centre 28, 28) has the
    # same 9 candidates; its IoUs: centre 256 / 400 = 0.64, edges e.g. [12, 20, 28, 36] n B
    # = [18, 20, 28, 36] = 160 / 496 = 0.3226, corners 100 / 556 = 0.1799. mean 0.2944,
    # unbiased std 0.1479 -> threshold 0.4424: B also claims (28, 28) only. A's IoU there
    # (1) beats B's (0.64) in either order.
    a, b = [20, 20, 36, 36], [18, 18, 38, 38]
    targets, expected, points = _run([(8, 8)], [8], [a, b], scale=2.0)
    assert _positives(targets, points) == {(28, 28): 0}
    assert targets.matched_idxs[0].tolist() == expected
    targets, expected, points = _run([(8, 8)], [8], [b, a], scale=2.0)
    assert _positives(targets, points) == {(28, 28): 1}
    assert targets.labels[0][targets.matched_idxs[0] == 1].tolist() == [1]  # class of box 1
    # Equal IoUs (the same box twice): the first listed keeps the location.
    targets, expected, points = _run([(8, 8)], [8], [a, a], scale=2.0)
    assert _positives(targets, points) == {(28, 28): 0}
    assert targets.matched_idxs[0].tolist() == expected


def test_positive_locations_must_be_inside_the_box():
    # A 0.3 x 0.2 px box near the location (28, 28): the 64 px anchors of its 9 candidates
    # all contain it, so their IoUs are equal (std 0) and every candidate passes the
    # threshold; only (28, 28) can lie inside. With x0 = 27.995 it is 0.005 px inside (not
    # more than 0.01 px: background); with x0 = 27.98, 0.02 px (positive).
    def pos(box):
        targets, expected, points = _run([(8, 8)], [8], [box])
        assert targets.matched_idxs[0].tolist() == expected
        return _positives(targets, points)

    assert pos([27.995, 27.9, 28.3, 28.1]) == {}
    assert pos([27.98, 27.9, 28.3, 28.1]) == {(28, 28): 0}


def test_no_boxes_and_all_candidates_equal():
    targets, expected, _ = _run([(4, 4)], [8], [])
    assert (targets.labels == BG).all() and (targets.matched_idxs == -1).all()
    # A 2 x 2 box well inside every candidate's 64 px anchor: all 9 IoUs are 4/4096, so
    # std = 0 and every candidate inside the box... only (12, 12) lies inside [11, 11, 13, 13].
    targets, expected, points = _run([(4, 4)], [8], [[11, 11, 13, 13]])
    assert targets.matched_idxs[0].tolist() == expected
    assert _positives(targets, points) == {(12, 12): 0}


def _random_boxes(rng, n, h, w, integer):
    boxes = []
    for _ in range(n):
        bw = math.exp(rng.uniform(0, math.log(w)))
        bh = math.exp(rng.uniform(0, math.log(h)))
        x0 = rng.uniform(-0.1 * w, w - bw * 0.5)
        y0 = rng.uniform(-0.1 * h, h - bh * 0.5)
        box = [x0, y0, x0 + bw, y0 + bh]
        if integer:
            box = [float(round(v)) for v in box]
            box[2] = max(box[2], box[0] + 1)
            box[3] = max(box[3], box[1] + 1)
        boxes.append(box)
    return boxes


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_match_the_reference(seed):
    rng = random.Random(seed)
    strides = [8, 16, 32, 64, 128][: rng.randint(1, 5)]
    h, w = rng.randint(16, 200), rng.randint(16, 200)
    shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    k = rng.choice([1, 2, 3, 9, 9, 9, 20])
    scale = rng.choice([8.0, 8.0, 4.0, 2.5])
    offset = rng.choice([0.5, 0.0])
    boxes = _random_boxes(rng, rng.randint(1, 25), h, w, integer=seed % 2 == 0)
    targets, expected, points = _run(shapes, strides, boxes, k, scale, offset, size=(h, w))
    assert targets.matched_idxs[0].tolist() == expected
    m = targets.matched_idxs[0]
    pos = m >= 0
    box_t = torch.tensor(boxes, dtype=torch.float32)[m[pos]]
    x, y = points[pos, 0], points[pos, 1]
    ltrb = torch.stack([x - box_t[:, 0], y - box_t[:, 1], box_t[:, 2] - x, box_t[:, 3] - y], 1)
    assert torch.equal(targets.reg_targets[0][pos], ltrb)
    assert (targets.reg_targets[0][~pos] == 0).all()
    assert targets.labels[0][pos].tolist() == [i % BG for i in m[pos].tolist()]
    assert (targets.labels[0][~pos] == BG).all()


def test_many_boxes_match_a_dense_computation():
    # 1500 boxes at 800x1344: the window search against brute force over every location
    # (stable sort of all distances), which the reference loops would take minutes for.
    rng = random.Random(7)
    strides = [8, 16, 32, 64, 128]
    shapes = [(math.ceil(800 / s), math.ceil(1344 / s)) for s in strides]
    locations = compute_locations(shapes, strides)
    boxes = torch.tensor(_random_boxes(rng, 1500, 800, 1333, integer=True))
    centers = (boxes[:, :2].double() + boxes[:, 2:].double()) / 2
    for loc in locations:
        xs, ys = grid_axes(loc)
        got = _nearest_on_grid(xs.double(), ys.double(), centers, 9)
        pts = loc.double()
        dx2 = (pts[None, :, 0] - centers[:, None, 0]) ** 2
        d2 = dx2 + (pts[None, :, 1] - centers[:, None, 1]) ** 2
        dense = torch.sort(d2, dim=1, stable=True).indices[:, : min(9, len(loc))]
        assert torch.equal(got, dense)
    matched = atss_match([grid_axes(loc) for loc in locations], strides, boxes)
    assert matched.shape == (sum(len(loc) for loc in locations),)
    assert (matched >= 0).sum() > 1500


def test_locations_must_form_a_grid():
    loc = compute_locations([(4, 4)], [8])[0]
    with pytest.raises(ValueError, match="row-major grid"):
        grid_axes(loc.flip(0))


def test_built_from_config():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import fcos_d2

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file("configs/FCOS_ATSS_R50_1x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FCOS.ATSS_TOPK = 5
    model = build_model(cfg)
    assert isinstance(model.assigner, ATSSAssigner)
    assert (model.assigner.topk, model.assigner.anchor_scale) == (5, 8.0)


def test_a_batch_is_assigned_image_by_image():
    # Images with 4, 0, 7 and 1 boxes, assigned together, each against the reference.
    rng = random.Random(3)
    strides, h, w = [8, 16, 32], 96, 128
    shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    locations = compute_locations(shapes, strides)
    levels = [[tuple(p) for p in loc.double().tolist()] for loc in locations]
    batch = [_random_boxes(rng, n, h, w, integer=True) for n in (4, 0, 7, 1)]
    instances = [_instances(b, [i % BG for i in range(len(b))], (h, w)) for b in batch]
    targets = ATSSAssigner(num_classes=BG, topk=9)(locations, strides, instances)
    assert targets.labels.shape == (4, sum(len(loc) for loc in locations))
    for i, boxes in enumerate(batch):
        expected = reference_atss(levels, strides, torch.tensor(boxes).tolist(), 9, 8.0)
        assert targets.matched_idxs[i].tolist() == expected
        m = targets.matched_idxs[i]
        assert targets.labels[i][m >= 0].tolist() == [j % BG for j in m[m >= 0].tolist()]
    assert (targets.matched_idxs[1] == -1).all() and (targets.labels[1] == BG).all()
    assert (targets.matched_idxs >= 0).sum() > 0
