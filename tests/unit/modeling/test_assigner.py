"""FCOS assignment against hand-computed targets and a slow per-location reference."""

import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from fcos_d2.modeling.assigner import (
    FCOSAssigner,
    compute_centerness_targets,
    level_size_ranges,
    match_locations_to_boxes,
)
from fcos_d2.modeling.locations import compute_locations

BG = 80  # background label with num_classes = 80
# A 64x64 image with three levels: strides 8, 16, 32 -> maps of 8x8, 4x4, 2x2.
STRIDES = (8, 16, 32)
SHAPES = ((8, 8), (4, 4), (2, 2))


def _instances(boxes, classes, size=(64, 64)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _assign(
    boxes, classes, sizes=(16, 32), radius=0.0, max_pairs=4_000_000, bounds="closed", area="wh"
):
    """Positives as {(level, x, y): (label, (l, t, r, b))} plus the raw targets."""
    locations = compute_locations(SHAPES, STRIDES, offset=0.5)
    assigner = FCOSAssigner(
        num_classes=BG,
        sizes_of_interest=sizes,
        center_sampling_radius=radius,
        max_pairs=max_pairs,
        size_range_bounds=bounds,
        match_area=area,
    )
    targets = assigner(locations, STRIDES, [_instances(boxes, classes)])
    level_of = torch.cat([torch.full((len(loc),), i) for i, loc in enumerate(locations)])
    points = torch.cat(locations)
    positives = {}
    for j in torch.nonzero(targets.labels[0] != BG).flatten().tolist():
        x, y = points[j].tolist()
        key = (int(level_of[j]), int(x), int(y))
        positives[key] = (int(targets.labels[0, j]), tuple(targets.reg_targets[0, j].tolist()))
    return positives, targets


def test_locations_follow_the_paper_mapping():
    # (floor(s/2) + x*s, floor(s/2) + y*s), row-major.
    loc = compute_locations([(2, 3)], [8], offset=0.5)[0]
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert loc.tolist() == expected
    # torchvision convention: offset 0.
    loc0 = compute_locations([(1, 2)], [16], offset=0.0)[0]
    assert loc0.tolist() == [[0, 0], [16, 0]]


def test_level_size_ranges():
    assert level_size_ranges([64, 128, 256, 512], 5) == [
        (0, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, math.inf),
    ]
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST"):
        level_size_ranges([64, 128], 5)


def test_one_box_per_level_range():
    # Ranges: P3 (0, 16], P4 (16, 32], P5 (32, inf).
    # A 16x16 box at the top-left corner: only P3 locations (4|12, 4|12) are inside with
    # max(l,t,r,b) = 12. P4's (8, 8) has max 8 (not in (16, 32]); P5's (16, 16) has r = 0.
    p3 = {
        (0, 4, 4): (0, (4.0, 4.0, 12.0, 12.0)),
        (0, 12, 4): (0, (12.0, 4.0, 4.0, 12.0)),
        (0, 4, 12): (0, (4.0, 12.0, 12.0, 4.0)),
        (0, 12, 12): (0, (12.0, 12.0, 4.0, 4.0)),
    }
    # A 32x32 box at the top-right: P3 locations inside all have max >= 20 -> too large
    # for P3; P4 locations (40|56, 8|24) have max 24; P5's (48, 16) has max 16.
    p4 = {
        (1, 40, 8): (1, (8.0, 8.0, 24.0, 24.0)),
        (1, 56, 8): (1, (24.0, 8.0, 8.0, 24.0)),
        (1, 40, 24): (1, (8.0, 24.0, 24.0, 8.0)),
        (1, 56, 24): (1, (24.0, 24.0, 8.0, 8.0)),
    }
    # The whole image: every location is inside, but only P5 locations (16|48, 16|48)
    # have max(l,t,r,b) = 48 in (32, inf); P3/P4 locations inside have max in [36, 60]
    # (outside (0,16] and (16,32]).
    p5 = {
        (2, 16, 16): (2, (16.0, 16.0, 48.0, 48.0)),
        (2, 48, 16): (2, (48.0, 16.0, 16.0, 48.0)),
        (2, 16, 48): (2, (16.0, 48.0, 48.0, 16.0)),
        (2, 48, 48): (2, (48.0, 48.0, 16.0, 16.0)),
    }
    for box, cls, expected in [
        ([0, 0, 16, 16], 0, p3),
        ([32, 0, 64, 32], 1, p4),
        ([0, 0, 64, 64], 2, p5),
    ]:
        positives, _ = _assign([box], [cls])
        assert positives == expected, box
    # All three together: their positives do not compete, so the union is assigned.
    positives, _ = _assign([[0, 0, 16, 16], [32, 0, 64, 32], [0, 0, 64, 64]], [0, 1, 2])
    assert positives == {**p3, **p4, **p5}


def test_overlapping_boxes_smaller_area_wins():
    # A: [0,0,16,16] (area 256), B: [2,2,20,14] (area 216). Both qualify on the four P3
    # locations (4|12, 4|12): for B, (4,4) gives (2,2,16,10) whose max 16 is inside the
    # closed upper bound of (0, 16]. The smaller B wins everywhere.
    positives, targets = _assign([[0, 0, 16, 16], [2, 2, 20, 14]], [5, 7])
    assert positives == {
        (0, 4, 4): (7, (2.0, 2.0, 16.0, 10.0)),
        (0, 12, 4): (7, (10.0, 2.0, 8.0, 10.0)),
        (0, 4, 12): (7, (2.0, 10.0, 16.0, 2.0)),
        (0, 12, 12): (7, (10.0, 10.0, 8.0, 2.0)),
    }
    assert set(targets.matched_idxs[0].unique().tolist()) == {-1, 1}
    # Box order does not matter.
    swapped, _ = _assign([[2, 2, 20, 14], [0, 0, 16, 16]], [7, 5])
    assert swapped == positives


def test_a_max_equal_to_a_bound_is_positive_when_closed():
    # Ranges P3 [0, 16], P4 [16, 32], P5 [32, inf] (paper: both bounds included).
    # Box [-4, -4, 20, 20]: the P3 locations (4|12, 4|12) have max(l, t, r, b) = 16 = m_1
    # (e.g. (4, 4): (8, 8, 16, 16)); the P4 location (8, 8) has max 12.
    closed, _ = _assign([[-4, -4, 20, 20]], [1])
    assert closed == {
        (0, 4, 4): (1, (8.0, 8.0, 16.0, 16.0)),
        (0, 12, 4): (1, (16.0, 8.0, 8.0, 16.0)),
        (0, 4, 12): (1, (8.0, 16.0, 16.0, 8.0)),
        (0, 12, 12): (1, (16.0, 16.0, 8.0, 8.0)),
    }
    # Open bounds (torchvision, Detectron2's FCOS): none.
    assert _assign([[-4, -4, 20, 20]], [1], bounds="open")[0] == {}
    # Box [-8, 0, 24, 16]: the P4 location (8, 8) has (16, 8, 16, 8), max 16 = P4's lower
    # bound; every P3 location inside has max 20 (e.g. (4, 4): (12, 4, 20, 12)).
    assert _assign([[-8, 0, 24, 16]], [2])[0] == {(1, 8, 8): (2, (16.0, 8.0, 16.0, 8.0))}
    assert _assign([[-8, 0, 24, 16]], [2], bounds="open")[0] == {}


def test_equal_areas_the_first_box_wins():
    # A [0, 0, 16, 12] and B [0, 0, 12, 16] have equal areas (192; and (w + 1) * (h + 1) =
    # 221 both). At the P3 location (4, 4) both qualify (max 12): the first listed wins.
    a, b = [0, 0, 16, 12], [0, 0, 12, 16]
    for area in ("wh", "wh_plus_one"):
        assert _assign([a, b], [0, 1], area=area)[0][(0, 4, 4)] == (0, (4.0, 4.0, 12.0, 8.0))
        assert _assign([b, a], [1, 0], area=area)[0][(0, 4, 4)] == (1, (4.0, 4.0, 8.0, 12.0))


def test_plus_one_areas_can_reverse_the_order():
    # Ranges P3 [0, 4], P4 [4, 64], P5 [64, inf]. At the P4 location (8, 8): a thin 4 x 60
    # box [6, -20, 10, 40] (w * h = 240, (w + 1) * (h + 1) = 305) and a 16 x 16 square
    # (256; 289) both qualify (max 32 and 8). w * h picks the thin box, the original
    # FCOS's (w + 1) * (h + 1) the square.
    square, thin = [0, 0, 16, 16], [6, -20, 10, 40]
    wh, _ = _assign([square, thin], [0, 1], sizes=(4, 64))
    plus_one, _ = _assign([square, thin], [0, 1], sizes=(4, 64), area="wh_plus_one")
    assert wh[(1, 8, 8)] == (1, (2.0, 28.0, 2.0, 32.0))
    assert plus_one[(1, 8, 8)] == (0, (8.0, 8.0, 8.0, 8.0))


def test_torchvision_areas_tie_within_float32_spacing():
    # float32(1e8 - area): 1e8 - 400 and 1e8 - 399 round to the same value, so a 20 x 20
    # box listed first beats an overlapping 21 x 19 one (399) as in torchvision.
    first, second = [0, 0, 20, 20], [0, 0, 21, 19]
    tv, _ = _assign([first, second], [0, 1], sizes=(64, 128), area="torchvision")
    exact, _ = _assign([first, second], [0, 1], sizes=(64, 128))
    assert tv[(0, 4, 4)][0] == 0 and exact[(0, 4, 4)][0] == 1


def test_boxes_touching_the_image_border_and_strict_inside():
    # Bottom-right corner box: (52|60, 52|60) inside. Its edges x=48, y=48 hold no P3
    # location; a location on a box edge (distance 0) is not inside.
    positives, _ = _assign([[48, 48, 64, 64]], [3])
    assert positives == {
        (0, 52, 52): (3, (4.0, 4.0, 12.0, 12.0)),
        (0, 60, 52): (3, (12.0, 4.0, 4.0, 12.0)),
        (0, 52, 60): (3, (4.0, 12.0, 12.0, 4.0)),
        (0, 60, 60): (3, (12.0, 12.0, 4.0, 4.0)),
    }
    # Box [4, 4, 12, 12]: the locations (4,4), (12,4), ... lie on its border -> none inside.
    positives, _ = _assign([[4, 4, 12, 12]], [3])
    assert positives == {}


def test_center_sampling_shrinks_the_positive_region():
    sizes = (64, 128)  # everything up to 64 on P3
    # 48x48 box: without center sampling all 36 P3 locations x,y in {4,...,44} are positive.
    positives, _ = _assign([[0, 0, 48, 48]], [0], sizes=sizes)
    assert len(positives) == 36 and all(level == 0 for level, _, _ in positives)
    # r = 1.5 -> |x - 24| < 12 and |y - 24| < 12: x, y in {20, 28}.
    positives, _ = _assign([[0, 0, 48, 48]], [0], sizes=sizes, radius=1.5)
    assert set(positives) == {(0, 20, 20), (0, 28, 20), (0, 20, 28), (0, 28, 28)}
    assert positives[(0, 20, 20)] == (0, (20.0, 20.0, 28.0, 28.0))
    # The radius region is clipped to the box: for [0,0,48,10] (center y = 5), y = 12 is
    # within 12 of the center but outside the box.
    positives, _ = _assign([[0, 0, 48, 10]], [0], sizes=sizes, radius=1.5)
    assert set(positives) == {(0, 20, 4), (0, 28, 4)}


def test_zero_boxes():
    positives, targets = _assign([], [])
    assert positives == {}
    assert (targets.labels == BG).all()
    assert (targets.matched_idxs == -1).all()
    assert (targets.reg_targets == 0).all()
    assert targets.labels.shape == (1, 64 + 16 + 4)


def test_centerness_targets_hand_picked():
    ltrb = torch.tensor(
        [[4.0, 4.0, 12.0, 12.0], [8.0, 8.0, 8.0, 8.0], [2.0, 2.0, 16.0, 10.0], [1.0, 3.0, 1.0, 1.0]]
    )
    expected = torch.tensor([1 / 3, 1.0, math.sqrt(2 / 16 * 2 / 10), math.sqrt(1 / 3)])
    torch.testing.assert_close(compute_centerness_targets(ltrb), expected)


def _slow_reference(points, lo, hi, strides, boxes, radius, bounds="closed"):
    """The rule written one location and one box at a time."""
    out = []
    for (x, y), a, b, s in zip(points.tolist(), lo.tolist(), hi.tolist(), strides.tolist()):
        best, best_area = -1, math.inf
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            l, t, r, bt = x - x0, y - y0, x1 - x, y1 - y
            if min(l, t, r, bt) <= 0:
                continue
            if radius > 0:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                if not (abs(x - cx) < radius * s and abs(y - cy) < radius * s):
                    continue
            m = max(l, t, r, bt)
            if not (a <= m <= b if bounds == "closed" else a < m < b):
                continue
            area = (x1 - x0) * (y1 - y0)
            if area < best_area:
                best, best_area = j, area
        out.append(best)
    return torch.tensor(out)


@pytest.mark.parametrize(
    "seed,radius,bounds",
    [
        (0, 0.0, "closed"),
        (1, 1.5, "closed"),
        (2, 0.0, "open"),
        (3, 1.0, "closed"),
        (4, 1.5, "open"),
    ],
)
def test_vectorised_matches_slow_reference_on_random_boxes(seed, radius, bounds):
    g = torch.Generator().manual_seed(seed)
    strides = (8, 16, 32, 64, 128)
    shapes = [(320 // s + 1, 416 // s + 1) for s in strides]
    assigner = FCOSAssigner(num_classes=BG, center_sampling_radius=radius)
    points, lo, hi, st = assigner.level_tensors(compute_locations(shapes, strides), strides)
    n = 40
    xy = torch.rand(n, 2, generator=g) * torch.tensor([416.0, 320.0])
    wh = torch.exp(torch.rand(n, 2, generator=g) * math.log(300.0)) + 2
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1).round()  # integer coords: ties happen
    fast = match_locations_to_boxes(points, lo, hi, st, boxes, radius, size_range_bounds=bounds)
    slow = _slow_reference(points, lo, hi, st, boxes, radius, bounds)
    assert (fast >= 0).sum() > 30  # the comparison is not vacuous
    assert torch.equal(fast, slow)
    # Chunked evaluation (tiny memory cap) gives the same answer.
    chunked = match_locations_to_boxes(
        points, lo, hi, st, boxes, radius, max_pairs=1000, size_range_bounds=bounds
    )
    assert torch.equal(chunked, fast)


def test_batch_of_images_is_assigned_per_image():
    locations = compute_locations(SHAPES, STRIDES)
    assigner = FCOSAssigner(num_classes=BG, sizes_of_interest=(16, 32))
    one = _instances([[0, 0, 16, 16]], [4])
    none = _instances([], [])
    targets = assigner(locations, STRIDES, [one, none, one])
    assert targets.labels.shape == (3, 84)
    assert torch.equal(targets.labels[0], targets.labels[2])
    assert (targets.labels[0] == 4).sum() == 4
    assert (targets.labels[1] == BG).all()
