"""
fcos_d2/modeling/tta.py: the box mapping of each augmented copy and the merging, by hand;
the TTA wrapper on an untrained model. (train_net.py with TTA: tests/integration/test_tta_eval.py.)
"""

import pytest
import torch
from detectron2.data.transforms import ResizeTransform
from detectron2.modeling import build_model
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Instances

from fcos_d2.modeling.tta import FCOSWithTTA, boxes_to_original, merge_detections
from helpers import (
    small_fcos_cfg,
)


def _transforms(height, width, image_hw, min_sizes, max_size=4000, flip=True):
    """The transforms DatasetMapperTTA gives each copy of a (image_hw) image of an original
    height x width image, with the copies' sizes."""
    mapper = DatasetMapperTTA(min_sizes=min_sizes, max_size=max_size, flip=flip)
    image = torch.zeros((3, *image_hw), dtype=torch.uint8)
    copies = mapper({"image": image, "height": height, "width": width})
    return [(tuple(c["image"].shape[1:]), c["transforms"]) for c in copies]


def test_box_mapping_of_a_scale_and_its_flip_by_hand():
    # 50 x 80 image, shorter side 100: the copies are 100 x 160 (x2), unflipped and flipped.
    (size, plain), (size_f, flipped) = _transforms(50, 80, (50, 80), [100])
    assert size == size_f == (100, 160)
    box = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    # Unflipped: divide by 2.
    assert torch.allclose(boxes_to_original(box, plain), torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    # Flipped: x -> 160 - x gives (110, 20, 150, 60), then / 2.
    assert torch.allclose(boxes_to_original(box, flipped), torch.tensor([[55.0, 10.0, 75.0, 30.0]]))


def test_box_mapping_uses_the_rounded_size_per_axis():
    # 77 x 101, shorter side 97: width round(101 * 97 / 77) = 127, so x scales by 127 / 101
    # and y by 97 / 77.
    (size, plain), (_, flipped) = _transforms(77, 101, (77, 101), [97])
    assert size == (97, 127)
    box = torch.tensor([[12.7, 9.7, 25.4, 19.4], [0.0, 0.0, 127.0, 97.0]])
    expected = torch.tensor([[10.1, 7.7, 20.2, 15.4], [0.0, 0.0, 101.0, 77.0]])
    assert torch.allclose(boxes_to_original(box, plain), expected, atol=1e-4)
    # Flipped copy: x -> 127 - x first: (101.6, 9.7, 114.3, 19.4) -> (80.8, 7.7, 90.9, 15.4).
    expected_f = torch.tensor([[80.8, 7.7, 90.9, 15.4], [0.0, 0.0, 101.0, 77.0]])
    assert torch.allclose(boxes_to_original(box, flipped), expected_f, atol=1e-4)


def test_box_mapping_through_the_loaders_resize():
    # The test loader resized a 100 x 160 original to 50 x 80; the copy at shorter side 25
    # is 25 x 40: its boxes scale by 4 to the original.
    ((size, plain), (_, flipped)) = _transforms(100, 160, (50, 80), [25])
    assert size == (25, 40)
    assert isinstance(plain.transforms[0], ResizeTransform)
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(boxes_to_original(box, plain), torch.tensor([[4.0, 8.0, 12.0, 16.0]]))
    # Flipped: (40 - 3, 2, 40 - 1, 4) x 4.
    assert torch.allclose(
        boxes_to_original(box, flipped), torch.tensor([[148.0, 8.0, 156.0, 16.0]])
    )


# Hand-made detections in original coordinates. Class 0: A, B (IoU(A, B) = 90 / 110 =
# 0.818), C (IoU(A, C) = 100 / 120 = 0.833), D (IoU(A, D) = 70 / 130 = 0.538,
# IoU(B, D) = 80 / 120 = 0.667); class 1: E = A.
_BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # A 0.9
        [1.0, 0.0, 11.0, 10.0],  # B 0.6
        [0.0, 0.0, 10.0, 12.0],  # C 0.3
        [3.0, 0.0, 13.0, 10.0],  # D 0.7
        [0.0, 0.0, 10.0, 10.0],  # E 0.5, class 1
    ]
)
_SCORES = torch.tensor([0.9, 0.6, 0.3, 0.7, 0.5])
_CLASSES = torch.tensor([0, 0, 0, 0, 1])


def _merge(method, max_detections=100, size=(20, 20)):
    return merge_detections(
        _BOXES,
        _SCORES,
        _CLASSES,
        size,
        nms_thresh=0.6,
        max_detections=max_detections,
        method=method,
        voting_iou=0.8,
    )


def test_merge_nms_by_hand():
    out = _merge("nms")
    # B and C overlap A (same class) above 0.6: suppressed. D (0.538) and E (class 1) stay.
    assert out.image_size == (20, 20)
    assert torch.equal(out.scores, torch.tensor([0.9, 0.7, 0.5]))
    assert torch.equal(out.pred_classes, torch.tensor([0, 0, 1]))
    assert torch.equal(out.pred_boxes.tensor, _BOXES[[0, 3, 4]])
    top2 = _merge("nms", max_detections=2)
    assert torch.equal(top2.scores, torch.tensor([0.9, 0.7]))


def test_merge_voting_by_hand():
    out = _merge("voting")
    # A <- (0.9 A + 0.6 B + 0.3 C) / 1.8 (B, C overlap it >= 0.8; D does not; E is class 1):
    # x0 = 0.6 / 1.8, y0 = 0, x1 = (9 + 6.6 + 3) / 1.8, y1 = (9 + 6 + 3.6) / 1.8.
    a = torch.tensor([0.6 / 1.8, 0.0, 18.6 / 1.8, 18.6 / 1.8])
    assert torch.allclose(out.pred_boxes.tensor[0], a, atol=1e-5)
    # D's only voter is itself (IoU with B 0.667 < 0.8); E is alone in class 1.
    assert torch.allclose(out.pred_boxes.tensor[1:], _BOXES[[3, 4]], atol=1e-5)
    assert torch.equal(out.scores, torch.tensor([0.9, 0.7, 0.5]))


def test_merge_clips_to_the_original_image():
    out = merge_detections(
        torch.tensor([[-3.0, 2.0, 30.0, 8.0]]),
        torch.tensor([0.5]),
        torch.tensor([2]),
        (10, 25),
        nms_thresh=0.6,
        max_detections=100,
    )
    assert torch.equal(out.pred_boxes.tensor, torch.tensor([[0.0, 2.0, 25.0, 8.0]]))


def test_merge_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="TTA_MERGE"):
        _merge("average")


@pytest.fixture(scope="module")
def untrained():
    cfg = small_fcos_cfg()
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0  # an untrained model scores ~0.01
    cfg.TEST.AUG.MIN_SIZES = (64, 97)
    cfg.TEST.AUG.MAX_SIZE = 200
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


@pytest.mark.parametrize("orig_hw,image_hw", [((77, 101), (77, 101)), ((153, 91), (107, 64))])
def test_tta_returns_instances_of_the_original_size(untrained, orig_hw, image_hw):
    cfg, model = untrained
    tta = FCOSWithTTA(cfg, model)
    calls = []
    handle = model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, *image_hw), generator=g, dtype=torch.uint8)
    try:
        with torch.no_grad():
            (out,) = tta([{"image": image, "height": orig_hw[0], "width": orig_hw[1]}])
    finally:
        handle.remove()
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == orig_hw
    assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= orig_hw[1]).all() and (boxes[:, 3] <= orig_hw[0]).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    # Two sizes, each with its flip: each size's two copies share one backbone pass.
    assert calls == [2, 2]


def test_tta_with_one_size_and_no_flip_is_the_model(untrained):
    # One copy, the image resized to 100 x 131: the wrapper must return what the model gives
    # on that copy, rescaled to 77 x 101 by Detectron2's postprocessing.
    cfg, model = untrained
    mapper = DatasetMapperTTA(min_sizes=[100], max_size=200, flip=False)
    tta = FCOSWithTTA(model, tta_mapper=mapper)
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 77, 101), generator=g, dtype=torch.uint8)
    (copy,) = mapper({"image": image, "height": 77, "width": 101})
    assert tuple(copy["image"].shape[1:]) == (100, 131)
    with torch.no_grad():
        (augmented,) = tta([{"image": image, "height": 77, "width": 101}])
        (direct,) = model([{"image": copy["image"], "height": 77, "width": 101}])
    a, d = augmented["instances"], direct["instances"]
    assert a.image_size == d.image_size == (77, 101)
    assert len(a) == len(d) > 0
    assert torch.equal(a.scores, d.scores) and torch.equal(a.pred_classes, d.pred_classes)
    assert torch.allclose(a.pred_boxes.tensor, d.pred_boxes.tensor, atol=1e-3)


def test_tta_refuses_other_models():
    with pytest.raises(TypeError, match="FCOS model"):
        FCOSWithTTA(torch.nn.Linear(2, 2), tta_mapper=lambda d: [d])
