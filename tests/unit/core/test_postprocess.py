"""fcos_d2/postprocess.py: the post-processing description (config, JSON round trip, checks)
and to_original_size against Detectron2's detector_postprocess."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from fcos_d2.postprocess import PostProcessing, to_original_size
from helpers import ROOT, load_cfg

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_from_config_reads_the_keys_and_survives_json(path):
    cfg = load_cfg(path)
    f = cfg.MODEL.FCOS
    p = PostProcessing.from_config(cfg, (8, 16, 32))
    assert p.strides == (8, 16, 32)
    assert (p.score_thresh, p.nms_thresh) == (f.SCORE_THRESH_TEST, f.NMS_THRESH_TEST)
    assert (p.location_offset, p.location_stride) == (f.LOCATION_OFFSET, f.LOCATION_STRIDE)
    assert (p.sqrt_score, p.clip, p.nms_plus_one) == (
        f.SQRT_SCORE,
        f.CLIP_BOXES_TEST,
        f.NMS_LEGACY_PLUS_ONE,
    )
    assert p.topk_candidates == f.TOPK_CANDIDATES_TEST
    assert p.thresh_with_centerness == f.THRESH_WITH_CENTERNESS
    assert PostProcessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_flat_metadata_of_format_1_reads_too():
    p = PostProcessing(strides=(8, 16), score_thresh=0.2, sqrt_score=True)
    flat = {"network_only": True, "num_classes": 5, **p.to_dict()}  # 0.1's model.json
    assert PostProcessing.from_dict(flat) == p


@pytest.mark.parametrize(
    "change, key",
    [
        ({"clip": "box"}, "CLIP_BOXES_TEST"),
        ({"location_stride": "grid"}, "LOCATION_STRIDE"),
        ({"topk_candidates": 0}, "TOPK_CANDIDATES_TEST"),
        ({"max_detections": 0}, "DETECTIONS_PER_IMAGE"),
    ],
)
def test_bad_settings_name_their_key(change, key):
    with pytest.raises(ValueError, match=key):
        PostProcessing(strides=(8,), **change)


def test_is_frozen_and_hashable():
    p = PostProcessing(strides=(8,))
    with pytest.raises(AttributeError):
        p.score_thresh = 0.5  # type: ignore[misc]
    assert len({p, p.replace(score_thresh=0.05), p.replace(score_thresh=0.1)}) == 2


@pytest.mark.parametrize("resized, original", [((100, 150), (200, 300)), ((64, 96), (47, 71))])
def test_to_original_size_equals_detector_postprocess(resized, original):
    g = torch.Generator().manual_seed(0)
    h, w = resized
    xy = torch.rand(50, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - 10
    boxes = torch.cat((xy, xy + torch.rand(50, 2, generator=g) * 40), dim=1)
    boxes[0] = torch.tensor([w + 5.0, 3.0, w + 9.0, 8.0])  # outside: empty after clipping
    inst = Instances(resized, pred_boxes=Boxes(boxes.clone()), scores=torch.arange(50.0))
    want = detector_postprocess(inst, *original)
    for got_boxes, keep in (
        to_original_size(boxes, resized, original),
        [torch.as_tensor(x) for x in to_original_size(boxes.numpy(), resized, original)],
    ):
        assert torch.equal(want.scores, torch.arange(50.0)[keep])
        torch.testing.assert_close(got_boxes[keep], want.pred_boxes.tensor, rtol=0, atol=1e-4)
    assert not keep[0]


def test_imports_without_torch():
    code = (
        "import sys\n"
        "for m in ('torch', 'detectron2'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from fcos_d2.postprocess import PostProcessing, to_original_size\n"
        "b, k = to_original_size(np.array([[1., 2., 3., 4.]], np.float32), (10, 10), (20, 20))\n"
        "assert b.tolist() == [[2., 4., 6., 8.]] and k.tolist() == [True]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
