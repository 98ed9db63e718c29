"""fcos_d2/modeling/nms.py: the masked class-aware NMS and its export decomposition against
torchvision's batched_nms, and the export-only fake kernel."""

import pytest
import torch
from torchvision.ops import batched_nms

from fcos_d2.modeling.nms import batched_nms_mask, decompose_batched_nms_mask


def _candidates(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.rand(n, generator=g)
    groups = torch.randint(0, 4, (n,), generator=g)
    valid = torch.rand(n, generator=g) > 0.3
    return boxes, scores, groups, valid


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou", [0.3, 0.6])
def test_mask_keeps_what_batched_nms_keeps_among_the_valid(seed, iou):
    boxes, scores, groups, valid = _candidates(300, seed)
    mask = batched_nms_mask(boxes, scores, groups, valid, iou, 4)
    idx = valid.nonzero().squeeze(1)
    want = torch.zeros(300, dtype=torch.bool)
    want[idx[batched_nms(boxes[idx], scores[idx], groups[idx], iou)]] = True
    assert torch.equal(mask, want)
    assert not mask[~valid].any() and 0 < int(mask.sum()) < int(valid.sum())


@pytest.mark.parametrize("seed", range(3))
def test_decomposition_for_export_equals_the_operator(seed):
    boxes, scores, groups, valid = _candidates(200, seed)
    want = batched_nms_mask(boxes, scores, groups, valid, 0.5, 4)
    assert torch.equal(decompose_batched_nms_mask(boxes, scores, groups, valid, 0.5, 4), want)


def test_groups_do_not_suppress_each_other():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = box.repeat(3, 1)  # identical boxes
    scores = torch.tensor([0.9, 0.8, 0.7])
    valid = torch.ones(3, dtype=torch.bool)
    same = batched_nms_mask(boxes, scores, torch.tensor([0, 0, 0]), valid, 0.5, 2)
    apart = batched_nms_mask(boxes, scores, torch.tensor([0, 1, 0]), valid, 0.5, 2)
    assert same.tolist() == [True, False, False]
    assert apart.tolist() == [True, True, False]


def test_no_valid_candidate_keeps_nothing():
    boxes, scores, groups, _ = _candidates(10, 0)
    none = torch.zeros(10, dtype=torch.bool)
    assert not batched_nms_mask(boxes, scores, groups, none, 0.5, 4).any()
