"""MODEL.FCOS.COMPILE: torch.compile of backbone + head gives the eager outputs (slow)."""

import pytest
import torch
from detectron2.modeling import build_model

from helpers import ddp_batch, small_fcos_cfg


@pytest.mark.slow
def test_compiled_model_matches_eager():
    cfg = small_fcos_cfg()
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    eager = build_model(cfg).eval()
    cfg.MODEL.FCOS.COMPILE = True
    compiled = build_model(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    batch = ddp_batch(1)
    with torch.no_grad():
        images = eager.preprocess_image(batch)
        ref = eager.head([eager.backbone(images.tensor)[f] for f in eager.head_in_features])
        compiled(batch)  # compiles on first use
        feats = compiled.backbone(images.tensor)
        out = compiled.head([feats[f] for f in compiled.head_in_features])
    assert compiled.backbone._compiled_call_impl is not None
    assert set(compiled.state_dict()) == set(eager.state_dict())
    for a, b in zip(ref, out):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3)
