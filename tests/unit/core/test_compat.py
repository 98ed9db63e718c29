"""fcos_d2/compat.py: version parsing, the documented list of patches, and the one patch
that is undone (the COCOeval class during an evaluation). That importing fcos_d2,
building a Trainer and an evaluator, and exporting change exactly what compat.PATCHES
lists is measured in fresh interpreters in tests/integration/test_library_state.py."""

import contextlib

import detectron2.evaluation.coco_evaluation as coco_evaluation
import pytest

from fcos_d2 import compat
from fcos_d2.compat import PATCHES, _parse_version


def test_every_patch_names_its_stage_and_reason():
    stages = {"import", "lvis evaluator", "coco evaluation", "cpu launch", "export"}
    for patch in PATCHES:
        assert patch["stage"] in stages and patch["why"] and patch["when"], patch


@pytest.mark.parametrize(
    "text, want", [("0.6", (0, 6)), ("0.6+cpu", (0, 6)), ("1.0.0rc1", (1, 0, 0)), ("dev", ())]
)
def test_parse_version(text, want):
    assert _parse_version(text) == want


@pytest.mark.parametrize("raises", [False, True])
def test_cocoeval_fast_path_is_undone_after_the_evaluation(monkeypatch, raises):
    """Detectron2's module-level COCOeval_opt holds ``cls`` only inside, also when the
    evaluation raises (where Detectron2 has its own C++ class nothing changes at all)."""
    monkeypatch.setattr(compat, "HAS_FAST_COCOEVAL", False)
    before = coco_evaluation.COCOeval_opt

    class Fast:
        pass

    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with compat.cocoeval_fast_path(Fast):
            assert coco_evaluation.COCOeval_opt is Fast
            if raises:
                raise RuntimeError("evaluation failed")
    assert coco_evaluation.COCOeval_opt is before
    monkeypatch.setattr(compat, "HAS_FAST_COCOEVAL", True)
    with compat.cocoeval_fast_path(Fast):
        assert coco_evaluation.COCOeval_opt is before
