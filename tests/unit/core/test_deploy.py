"""
fcos_d2/deploy.py without an exported model: its Pillow resize against Detectron2's
ResizeShortestEdge (sizes and pixels), its numpy NMS against torchvision's, post-processing
without candidates. (With exported models: tests/integration/test_export.py.)
"""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from torchvision.ops import batched_nms

from fcos_d2.deploy import (
    nms_per_class,
    postprocess,
    resize_shortest_edge,
)
from fcos_d2.postprocess import PostProcessing


@pytest.mark.parametrize("h,w", [(300, 500), (500, 300), (100, 2000), (352, 352), (801, 1)])
def test_resize_matches_detectron2_output_size(h, w):
    image = np.zeros((h, w, 3), np.uint8)
    expected = T.ResizeShortestEdge.get_output_shape(h, w, 352, 512)
    assert resize_shortest_edge(image, 352, 512).shape[:2] == expected


@pytest.mark.parametrize("h,w", [(300, 500), (1000, 700), (97, 1500), (352, 352)])
def test_resize_equals_detectron2_pixels(h, w):
    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = T.ResizeShortestEdge([352, 352], 512).get_transform(image).apply_image(image)
    assert np.array_equal(resize_shortest_edge(image, 352, 512), want)


def test_numpy_nms_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 1], dim=1)
    scores = torch.rand(300, generator=g)
    classes = torch.randint(0, 4, (300,), generator=g)
    for thresh in (0.3, 0.6):
        want = batched_nms(boxes, scores, classes, thresh).numpy()
        got = nms_per_class(boxes.numpy(), scores.numpy(), classes.numpy(), thresh)
        assert got.tolist() == want.tolist()
        assert 30 < len(got) < 300


def test_numpy_postprocess_with_no_candidates():
    meta = {
        "strides": [8, 16],
        "location_stride": "level",
        "location_offset": 0.5,
        "score_thresh": 0.05,
        "topk_candidates": 1000,
        "sqrt_score": False,
        "thresh_with_centerness": False,
        "clip": "image",
        "nms_plus_one": False,
        "nms_thresh": 0.6,
        "max_detections": 100,
    }
    levels = [
        (np.full((3, 4, 6), -10.0), np.ones((4, 4, 6)), np.zeros((1, 4, 6))),
        (np.full((3, 2, 3), -10.0), np.ones((4, 2, 3)), np.zeros((1, 2, 3))),
    ]
    boxes, scores, classes = postprocess(levels, (30, 44), PostProcessing.from_dict(meta))
    assert boxes.shape == (0, 4) and len(scores) == 0 and len(classes) == 0
