"""fcos_d2/reference.py: the torchvision FCOS that the parity tests compare with, and its
fcos-d2 twin (the comparison itself: tests/integration/test_torchvision_parity.py)."""

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_d2.reference import fcos_d2_twin, seeded_torchvision_fcos, torchvision_fcos


def test_torchvision_fcos_trains_as_with_pretrained_weights():
    """FrozenBatchNorm2d and layer2-4 trainable, as torchvision builds it from weights."""
    model = torchvision_fcos(num_classes=3)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    plain = torchvision_fcos(num_classes=3, frozen_bn=False).backbone.body
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_seeded_model_and_its_twin():
    a, b = seeded_torchvision_fcos(seed=3, num_classes=4), seeded_torchvision_fcos(3, 4)
    other = seeded_torchvision_fcos(seed=4, num_classes=4)
    bias = a.head.classification_head.cls_logits.bias
    assert torch.equal(bias, b.head.classification_head.cls_logits.bias)
    assert not torch.equal(bias, other.head.classification_head.cls_logits.bias)
    twin, cfg = fcos_d2_twin(a, "MODEL.FCOS.SCORE_THRESH_TEST", "0.3")
    assert cfg.MODEL.FCOS.NUM_CLASSES == 4 and cfg.MODEL.FCOS.SCORE_THRESH_TEST == 0.3
    # The weights arrive: the twin's class bias and last box layer are torchvision's.
    ours = dict(twin.named_parameters())
    assert any(torch.equal(p, bias) for p in ours.values())
    reg = a.head.regression_head.bbox_reg.weight
    assert any(p.shape == reg.shape and torch.equal(p, reg) for p in ours.values())
