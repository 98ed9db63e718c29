"""
Checkpoint conversion (fcos_d2/convert.py, tools/convert_weights.py).

The AdelaiDet and original-FCOS checkpoints are synthesised here from those projects' own
key names and shapes (notes_ckpt_research.md), not by renaming fcos-d2's keys, so the
tests are an independent check of the renaming rules: every tensor must land, unchanged,
in the parameter Detectron2's naming says it belongs to.
"""

import os
import runpy
import sys
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import fcos_d2
from fcos_d2.convert import convert_checkpoint, convert_state_dict, load_state_dict
from fcos_d2.engine import FCOSCheckpointer
from fcos_d2.engine.checkpoint import IncompatibleCheckpointError
from fcos_d2.errors import InputError
from helpers import ROOT  # noqa: E402

COMPAT = os.path.join(ROOT, "configs", "compat")
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")

BN = ("weight", "bias", "running_mean", "running_var")
# R50: (blocks, bottleneck width, stage input channels) of layer1..layer4 = res2..res5.
R50_STAGES = [(3, 64, 64), (4, 128, 256), (6, 256, 512), (3, 512, 1024)]
TOWER_CONVS, TOWER_NORMS = (0, 3, 6, 9), (1, 4, 7, 10)
# COCO category ids that do not exist (torchvision keeps "N/A" outputs at these ids).
COCO_MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}

# (source key, expected fcos-d2 key, shape)
Entry = Tuple[str, str, Tuple[int, ...]]


# ---------------------------------------------------------------- synthetic checkpoints


def _norm(src: str, dst: str, c: int) -> List[Entry]:
    return [(f"{src}.{p}", f"{dst}.{p}", (c,)) for p in BN]


def _r50_entries(source: str) -> List[Entry]:
    """Stem and the 16 bottlenecks of R50 as named by ``source``, with Detectron2's names."""
    d2 = "backbone.bottom_up"
    if source == "adelaidet":  # detectron2 ResNet: convJ with a child .norm, shortcut(.norm)
        stem, stem_bn = f"{d2}.stem.conv1", f"{d2}.stem.conv1.norm"
    else:  # maskrcnn-benchmark: stem.conv1 / stem.bn1, convJ / bnJ, downsample.{0,1}
        stem, stem_bn = "backbone.body.stem.conv1", "backbone.body.stem.bn1"
    out = [(f"{stem}.weight", f"{d2}.stem.conv1.weight", (64, 3, 7, 7))]
    out += _norm(stem_bn, f"{d2}.stem.conv1.norm", 64)
    for k, (blocks, w, cin) in enumerate(R50_STAGES, start=1):
        for i in range(blocks):
            dst = f"{d2}.res{k + 1}.{i}"
            src = f"{d2}.res{k + 1}.{i}" if source == "adelaidet" else f"backbone.body.layer{k}.{i}"
            shapes = [(w, cin if i == 0 else 4 * w, 1, 1), (w, w, 3, 3), (4 * w, w, 1, 1)]
            for j, shape in enumerate(shapes, start=1):
                out.append((f"{src}.conv{j}.weight", f"{dst}.conv{j}.weight", shape))
                bn = f"{src}.conv{j}.norm" if source == "adelaidet" else f"{src}.bn{j}"
                out += _norm(bn, f"{dst}.conv{j}.norm", shape[0])
            if i == 0:
                sc = f"{src}.shortcut" if source == "adelaidet" else f"{src}.downsample.0"
                sc_bn = f"{src}.shortcut.norm" if source == "adelaidet" else f"{src}.downsample.1"
                out.append((f"{sc}.weight", f"{dst}.shortcut.weight", (4 * w, cin, 1, 1)))
                out += _norm(sc_bn, f"{dst}.shortcut.norm", 4 * w)
    return out


def _conv(src: str, dst: str, cout: int, cin: int, k: int) -> List[Entry]:
    return [
        (f"{src}.weight", f"{dst}.weight", (cout, cin, k, k)),
        (f"{src}.bias", f"{dst}.bias", (cout,)),
    ]


def _fpn_head_entries(source: str, num_classes: int = 80) -> List[Entry]:
    out: List[Entry] = []
    for level, cin in zip((3, 4, 5), (512, 1024, 2048)):
        if source == "adelaidet":  # detectron2 FPN: fpn_lateral{log2 stride}
            lat, op = f"backbone.fpn_lateral{level}", f"backbone.fpn_output{level}"
        else:  # maskrcnn-benchmark FPN numbers from 1 with C3 at fpn_inner2
            lat, op = f"backbone.fpn.fpn_inner{level - 1}", f"backbone.fpn.fpn_layer{level - 1}"
        out += _conv(lat, f"backbone.fpn_lateral{level}", 256, cin, 1)
        out += _conv(op, f"backbone.fpn_output{level}", 256, 256, 3)
    top = "backbone.top_block" if source == "adelaidet" else "backbone.fpn.top_blocks"
    for p in ("p6", "p7"):
        out += _conv(f"{top}.{p}", f"backbone.top_block.{p}", 256, 256, 3)
    head = "proposal_generator.fcos_head" if source == "adelaidet" else "rpn.head"
    for tower in ("cls_tower", "bbox_tower"):
        for i in TOWER_CONVS:
            out += _conv(f"{head}.{tower}.{i}", f"head.{tower}.{i}", 256, 256, 3)
        for i in TOWER_NORMS:  # GroupNorm(32, 256)
            out += [(f"{head}.{tower}.{i}.{p}", f"head.{tower}.{i}.{p}", (256,)) for p in BN[:2]]
    out += _conv(f"{head}.cls_logits", "head.cls_logits", num_classes, 256, 3)
    out += _conv(f"{head}.bbox_pred", "head.bbox_pred", 4, 256, 3)
    ctr = "ctrness" if source == "adelaidet" else "centerness"
    out += _conv(f"{head}.{ctr}", "head.centerness", 1, 256, 3)
    out += [(f"{head}.scales.{i}.scale", f"head.scales.{i}.scale", (1,)) for i in range(5)]
    return out


def _random_tensors(entries: List[Entry], seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for src, _, shape in entries:
        t = torch.randn(shape, generator=g)
        sd[src] = t.abs() + 0.5 if src.endswith("running_var") else t
    return sd


def _make_source_checkpoint(
    source: str, folder
) -> Tuple[List[Entry], Dict[str, torch.Tensor], str]:
    entries = _r50_entries(source) + _fpn_head_entries(source)
    sd = _random_tensors(entries, seed=1 if source == "adelaidet" else 2)
    path = os.path.join(str(folder), f"{source}_R50.pth")
    if source == "adelaidet":
        extra = {"pixel_mean": torch.rand(3, 1, 1) * 255, "pixel_std": torch.rand(3, 1, 1) + 1}
        torch.save({"model": {**sd, **extra}}, path)
        sd = {**sd, **extra}
    else:  # DDP-wrapped model saved by maskrcnn-benchmark's Checkpointer
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "iteration": 90000}, path)
    return entries, sd, path


def _build(config: str, num_classes: Optional[int] = None):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(COMPAT, config))
    cfg.MODEL.DEVICE = "cpu"
    if num_classes is not None:
        cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    return build_model(cfg)


def _load_strict(model, path: str) -> Dict[str, torch.Tensor]:
    """Load ``path`` with the strict checkpointer; its keys must be exactly the model's."""
    FCOSCheckpointer(model, strict=True).load(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    expected = model.state_dict()
    assert sorted(set(expected) - set(saved)) == []  # nothing missing
    assert sorted(set(saved) - set(expected)) == []  # nothing unexpected
    for k, v in expected.items():
        assert tuple(saved[k].shape) == tuple(v.shape), k
        assert torch.equal(v, saved[k]), k  # the load really copied it
    return expected


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def adelaidet_ckpt(workdir):
    return _make_source_checkpoint("adelaidet", workdir)


@pytest.fixture(scope="module")
def fcos_ckpt(workdir):
    return _make_source_checkpoint("fcos", workdir)


@pytest.fixture(scope="module")
def tv_ckpt(workdir):
    """torchvision's fcos_resnet50_fpn (91 outputs) as a plain state dict file."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
    sd = model.state_dict()
    # Make every class row recognisable: bias = COCO category id, weights distinct per row.
    sd["head.classification_head.cls_logits.bias"] = torch.arange(91, dtype=torch.float32)
    sd["head.classification_head.cls_logits.weight"] = torch.randn(91, 256, 3, 3)
    path = os.path.join(str(workdir), "tv_fcos.pth")
    torch.save(sd, path)
    return sd, path


@pytest.fixture(scope="module")
def tv_model():
    return _build("FCOS_R50_torchvision.yaml")


# ---------------------------------------------------------------- AdelaiDet / original FCOS

SPOT_CHECKS = {
    "adelaidet": [
        ("proposal_generator.fcos_head.ctrness.weight", "head.centerness.weight"),
        ("proposal_generator.fcos_head.ctrness.bias", "head.centerness.bias"),
        ("proposal_generator.fcos_head.scales.3.scale", "head.scales.3.scale"),
        ("proposal_generator.fcos_head.cls_tower.4.weight", "head.cls_tower.4.weight"),
        ("proposal_generator.fcos_head.bbox_tower.9.bias", "head.bbox_tower.9.bias"),
        ("proposal_generator.fcos_head.cls_logits.weight", "head.cls_logits.weight"),
        ("backbone.fpn_lateral3.weight", "backbone.fpn_lateral3.weight"),
        ("backbone.top_block.p7.weight", "backbone.top_block.p7.weight"),
        (
            "backbone.bottom_up.res2.0.conv1.norm.running_var",
            "backbone.bottom_up.res2.0.conv1.norm.running_var",
        ),
        ("backbone.bottom_up.res4.0.shortcut.weight", "backbone.bottom_up.res4.0.shortcut.weight"),
    ],
    "fcos": [
        ("rpn.head.centerness.weight", "head.centerness.weight"),
        ("rpn.head.scales.4.scale", "head.scales.4.scale"),
        ("rpn.head.cls_tower.10.weight", "head.cls_tower.10.weight"),
        ("rpn.head.bbox_pred.bias", "head.bbox_pred.bias"),
        ("backbone.fpn.fpn_inner2.weight", "backbone.fpn_lateral3.weight"),
        ("backbone.fpn.fpn_inner4.bias", "backbone.fpn_lateral5.bias"),
        ("backbone.fpn.fpn_layer3.weight", "backbone.fpn_output4.weight"),
        ("backbone.fpn.top_blocks.p6.weight", "backbone.top_block.p6.weight"),
        ("backbone.body.stem.conv1.weight", "backbone.bottom_up.stem.conv1.weight"),
        ("backbone.body.stem.bn1.bias", "backbone.bottom_up.stem.conv1.norm.bias"),
        (
            "backbone.body.layer1.0.bn1.running_var",
            "backbone.bottom_up.res2.0.conv1.norm.running_var",
        ),
        ("backbone.body.layer3.0.downsample.0.weight", "backbone.bottom_up.res4.0.shortcut.weight"),
        (
            "backbone.body.layer3.0.downsample.1.running_mean",
            "backbone.bottom_up.res4.0.shortcut.norm.running_mean",
        ),
        ("backbone.body.layer4.2.conv3.weight", "backbone.bottom_up.res5.2.conv3.weight"),
    ],
}


@pytest.mark.parametrize("source", ["adelaidet", "fcos"])
def test_convert_r50_checkpoint_loads_strictly(source, request, workdir):
    entries, sd, in_path = request.getfixturevalue(f"{source}_ckpt")
    assert len({dst for _, dst, _ in entries}) == len(entries)
    blocks = {dst.rsplit(".", 2)[0] for _, dst, _ in entries if ".conv1.weight" in dst}
    assert len(blocks) == 16 + 1  # 16 bottlenecks + the stem

    out_path = os.path.join(str(workdir), f"{source}_converted.pth")
    result = convert_checkpoint(in_path, out_path, source)
    assert result.source == source
    assert sorted(result.dropped) == (["pixel_mean", "pixel_std"] if source == "adelaidet" else [])
    assert len(result.state_dict) == len(entries)

    model = _build(f"FCOS_R50_{source}.yaml")
    loaded = _load_strict(model, out_path)
    assert set(loaded) == {dst for _, dst, _ in entries}

    # Every source tensor, unchanged, in the parameter Detectron2's naming puts it in; but
    # the original FCOS's FrozenBatchNorm has no epsilon: its running_var is stored minus
    # Detectron2's 1e-5, so that Detectron2's (var + eps).rsqrt() is its var.rsqrt().
    def check(src, dst):
        if source == "fcos" and dst.endswith("norm.running_var"):
            torch.testing.assert_close(loaded[dst] + 1e-5, sd[src], rtol=0, atol=1e-6)
            assert not torch.equal(loaded[dst], sd[src])
        else:
            assert torch.equal(loaded[dst], sd[src]), f"{src} -> {dst}"

    for src, dst, shape in entries:
        assert tuple(loaded[dst].shape) == shape, dst
        check(src, dst)
    for src, dst in SPOT_CHECKS[source]:
        check(src, dst)
    if source == "fcos":
        # maskrcnn-benchmark's FrozenBatchNorm2d: x * w * var.rsqrt() + b - mean * w * var.rsqrt()
        norm = model.backbone.bottom_up.stem.conv1.norm
        x = torch.randn(2, norm.num_features, 3, 3)
        src = {dst: src for src, dst, _ in entries}
        prefix = "backbone.bottom_up.stem.conv1.norm."
        w, b, mean, var = (
            sd[src[prefix + k]] for k in ("weight", "bias", "running_mean", "running_var")
        )
        scale = (w * var.rsqrt())[None, :, None, None]
        expected = x * scale + (b - mean * w * var.rsqrt())[None, :, None, None]
        torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)


def test_load_state_dict_unwraps_training_checkpoint(fcos_ckpt):
    entries, sd, path = fcos_ckpt
    loaded = load_state_dict(path)  # {"model": {"module." ...}, "iteration": 90000}
    assert set(loaded) == {src for src, _, _ in entries}
    assert torch.equal(loaded["rpn.head.centerness.weight"], sd["rpn.head.centerness.weight"])


# ---------------------------------------------------------------- torchvision FCOS


def test_torchvision_coco80_order(tv_ckpt, tv_model, workdir):
    sd, in_path = tv_ckpt
    out_path = os.path.join(str(workdir), "tv80.pth")
    result = convert_checkpoint(in_path, out_path, "torchvision")
    tracked = sorted(k for k in sd if k.endswith("num_batches_tracked"))
    assert tracked and sorted(result.dropped) == tracked

    ids = [i for i in range(1, 91) if i not in COCO_MISSING_IDS]
    assert len(ids) == 80
    out = result.state_dict
    assert out["head.cls_logits.bias"].tolist() == [float(i) for i in ids]
    w = sd["head.classification_head.cls_logits.weight"]
    for row, tv_row in [(0, 1), (11, 13), (79, 90), (10, 11), (40, 46)]:
        assert torch.equal(out["head.cls_logits.weight"][row], w[tv_row]), (row, tv_row)
    assert torch.equal(out["head.cls_logits.weight"], w[ids])

    loaded = _load_strict(tv_model, out_path)
    assert loaded["head.cls_logits.weight"].shape[0] == 80
    pairs = [
        ("head.regression_head.bbox_ctrness.weight", "head.centerness.weight"),
        ("head.regression_head.bbox_reg.weight", "head.bbox_pred.weight"),
        ("head.classification_head.conv.4.weight", "head.cls_tower.4.weight"),
        ("head.regression_head.conv.9.bias", "head.bbox_tower.9.bias"),
        ("backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn_lateral3.weight"),
        ("backbone.fpn.layer_blocks.2.0.weight", "backbone.fpn_output5.weight"),
        ("backbone.fpn.extra_blocks.p7.weight", "backbone.top_block.p7.weight"),
        ("backbone.body.layer3.0.downsample.0.weight", "backbone.bottom_up.res4.0.shortcut.weight"),
        ("backbone.body.bn1.running_var", "backbone.bottom_up.stem.conv1.norm.running_var"),
    ]
    for src, dst in pairs:
        assert torch.equal(loaded[dst], sd[src]), f"{src} -> {dst}"


def test_torchvision_keep_all_classes(tv_ckpt, workdir):
    sd, in_path = tv_ckpt
    out_path = os.path.join(str(workdir), "tv91.pth")
    result = convert_checkpoint(in_path, out_path, "torchvision", coco_80=False)
    assert result.state_dict["head.cls_logits.bias"].tolist() == [float(i) for i in range(91)]
    w = sd["head.classification_head.cls_logits.weight"]
    assert torch.equal(result.state_dict["head.cls_logits.weight"], w)
    loaded = _load_strict(_build("FCOS_R50_torchvision.yaml", num_classes=91), out_path)
    assert loaded["head.cls_logits.weight"].shape[0] == 91
    with pytest.raises(InputError, match="91 classes"):  # 91 kept but 80 asked for
        convert_state_dict(sd, "torchvision", coco_80=False, num_classes=80)


def test_torchvision_80_classes_refused_by_91_class_model(tv_ckpt, workdir):
    """The strict checkpointer names the class-count mismatch instead of loading randomly."""
    _, in_path = tv_ckpt
    out_path = os.path.join(str(workdir), "tv80_for_91.pth")
    convert_checkpoint(in_path, out_path, "torchvision")
    model = _build("FCOS_R50_torchvision.yaml", num_classes=91)
    with pytest.raises(IncompatibleCheckpointError, match="head.cls_logits.weight"):
        FCOSCheckpointer(model, strict=True).load(out_path)


# ---------------------------------------------------------------- torchvision ImageNet ResNet


def test_torchvision_resnet50_backbone(tv_model):
    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    result = convert_state_dict(sd, "torchvision-resnet")
    expected = {
        k: v for k, v in tv_model.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    assert set(result.state_dict) == set(expected)
    for k, v in result.state_dict.items():
        assert v.shape == expected[k].shape, k
    dropped = set(result.dropped)
    assert {"fc.weight", "fc.bias"} <= dropped
    assert dropped == {"fc.weight", "fc.bias"} | {k for k in sd if "num_batches_tracked" in k}
    out = result.state_dict
    d2 = "backbone.bottom_up"
    assert torch.equal(out[f"{d2}.stem.conv1.weight"], sd["conv1.weight"])
    assert torch.equal(out[f"{d2}.res3.0.shortcut.weight"], sd["layer2.0.downsample.0.weight"])
    assert torch.equal(out[f"{d2}.res5.2.conv2.weight"], sd["layer4.2.conv2.weight"])
    assert torch.equal(out[f"{d2}.res4.3.conv3.norm.weight"], sd["layer3.3.bn3.weight"])


def test_stride_in_1x1_false_for_torchvision_config(tv_model):
    # torchvision's v1.5 bottleneck strides in the 3x3 conv: res3.0.conv2 must have stride 2.
    block = tv_model.backbone.bottom_up.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


# ---------------------------------------------------------------- errors


def test_error_torchvision_checkpoint_as_adelaidet(tv_ckpt, workdir):
    _, in_path = tv_ckpt
    out_path = os.path.join(str(workdir), "wrong_source.pth")
    match = r"looks like a torchvision checkpoint.*--source torchvision"
    with pytest.raises(InputError, match=match):
        convert_checkpoint(in_path, out_path, "adelaidet")
    assert not os.path.exists(out_path)


def test_error_fcos_d2_checkpoint_as_source(tv_model):
    with pytest.raises(InputError, match="fcos-d2 checkpoint"):
        convert_state_dict(tv_model.state_dict(), "torchvision")


def test_error_unknown_extra_key(fcos_ckpt):
    _, sd, _ = fcos_ckpt
    bad = dict(sd)
    bad["rpn.head.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(InputError, match=r"1 key\(s\).*rpn\.head\.extra_conv\.weight"):
        convert_state_dict(bad, "fcos")


def test_error_wrong_number_of_classes(adelaidet_ckpt):
    _, sd, _ = adelaidet_ckpt
    with pytest.raises(InputError, match=r"predicts 80 classes, but 81"):
        convert_state_dict(sd, "adelaidet", num_classes=81)
    assert convert_state_dict(sd, "adelaidet", num_classes=80).state_dict  # the right count


def test_error_missing_file(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(InputError, match="not found.*nope.pth"):
        convert_checkpoint(missing, str(tmp_path / "out.pth"), "fcos")


@pytest.mark.parametrize(
    "name,text",
    [
        ("notes.txt", "hello world\nthis is not a checkpoint\n"),
        ("FCOS_R50_fcos.yaml", "# a config, not weights\nMODEL:\n  WEIGHTS: ''\n"),
        ("weights.json", '{"model": {}}\n'),
    ],
)
def test_error_not_a_checkpoint(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=name):
        convert_checkpoint(str(path), str(tmp_path / "out.pth"), "fcos")
    assert not (tmp_path / "out.pth").exists()


# ---------------------------------------------------------------- command-line tool


def _tool_main():
    """tools/convert_weights.py's main, for in-process runs (a fresh process costs ~5 s)."""
    sys.path.insert(0, os.path.dirname(TOOL))
    import convert_weights

    return convert_weights.main


def test_cli_converts_and_checks_config(fcos_ckpt, workdir, capsys):
    _, _, in_path = fcos_ckpt
    out_path = os.path.join(str(workdir), "cli_fcos.pth")
    config = os.path.join(ROOT, "configs/compat/FCOS_R50_fcos.yaml")
    _tool_main()(["--source", "fcos", in_path, out_path, "--config-file", config])
    stdout = capsys.readouterr().out
    assert f"loads into {config} with no missing or unexpected keys" in stdout
    assert "converted 324 tensors from fcos" in stdout
    assert f"wrote {out_path}" in stdout
    assert os.path.isfile(out_path) and not os.path.exists(out_path + ".unchecked")


def test_cli_wrong_source_exits_2(fcos_ckpt, workdir, monkeypatch, capsys):
    """The tool run as a script (its ``__main__`` block, in this process): one error line,
    exit status 2, no traceback, no output file."""
    _, _, in_path = fcos_ckpt
    out_path = os.path.join(str(workdir), "cli_wrong.pth")
    monkeypatch.setattr(sys, "argv", [TOOL, "--source", "adelaidet", in_path, out_path])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(TOOL, run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("convert_weights.py: error:")]
    assert len(errors) == 1 and "looks like a fcos checkpoint" in errors[0], err
    assert "Traceback" not in out + err
    assert not os.path.exists(out_path)


def test_cli_failed_config_check_keeps_the_old_output(tv_ckpt, workdir, capsys):
    """91 kept classes do not fit the 80-class compat config: exit 2, output untouched."""
    _, in_path = tv_ckpt
    out_path = os.path.join(str(workdir), "cli_tv91.pth")
    with open(out_path, "wb") as f:
        f.write(b"an older file the user still needs")
    config = os.path.join(ROOT, "configs/compat/FCOS_R50_torchvision.yaml")
    argv = ["--source", "torchvision", in_path, out_path, "--keep-all-classes"]
    with pytest.raises(InputError) as e:  # the tool prints it and exits 2 (test above)
        _tool_main()([*argv, "--config-file", config])
    assert "head.cls_logits.weight (checkpoint (91, 256, 3, 3), model (80, 256, 3, 3))" in str(
        e.value
    )
    assert "wrote" not in capsys.readouterr().out
    with open(out_path, "rb") as f:
        assert f.read() == b"an older file the user still needs"
    assert not os.path.exists(out_path + ".unchecked")


# ---------------------------------------------------------------- AdelaiDet DCNv2 models


def _adelaidet_dcnv2_entries() -> List[Entry]:
    """AdelaiDet's R50 FCOS with DEFORM_ON_PER_STAGE [F, T, T, T], DEFORM_MODULATED and
    FCOS.USE_DEFORMABLE: a conv2_offset (27 = 2 x 9 offsets + 9 mask logits) in every res3,
    res4 and res5 block; the last tower conv (index 9) is a DFConv2d with children offset and
    conv."""
    out = []
    head = "proposal_generator.fcos_head"
    for src, dst, shape in _r50_entries("adelaidet") + _fpn_head_entries("adelaidet"):
        tower_last = any(src.startswith(f"{head}.{t}.9.") for t in ("cls_tower", "bbox_tower"))
        if not tower_last:
            out.append((src, dst, shape))
    d2 = "backbone.bottom_up"
    for k, (blocks, w, _) in enumerate(R50_STAGES, start=1):
        if k + 1 in (3, 4, 5):
            for i in range(blocks):
                name = f"{d2}.res{k + 1}.{i}.conv2_offset"
                out += _conv(name, name, 27, w, 3)
    for tower in ("cls_tower", "bbox_tower"):
        out += _conv(f"{head}.{tower}.9.offset", f"head.{tower}.9.offset", 27, 256, 3)
        out += _conv(f"{head}.{tower}.9.conv", f"head.{tower}.9.conv", 256, 256, 3)
    return out


def test_adelaidet_dcnv2_checkpoint_loads_strictly(workdir):
    entries = _adelaidet_dcnv2_entries()
    sd = _random_tensors(entries, seed=3)
    in_path = os.path.join(str(workdir), "adelaidet_dcnv2.pth")
    torch.save({"model": sd}, in_path)
    out_path = os.path.join(str(workdir), "adelaidet_dcnv2_converted.pth")
    convert_checkpoint(in_path, out_path, "adelaidet")
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "FCOS_R50_dcnv2_2x_ms.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    loaded = _load_strict(build_model(cfg), out_path)
    assert set(loaded) == {dst for _, dst, _ in entries}
    for src, dst, _ in entries:
        assert torch.equal(loaded[dst], sd[src]), f"{src} -> {dst}"
    assert sum(1 for _, dst, _ in entries if "conv2_offset.weight" in dst) == 4 + 6 + 3
