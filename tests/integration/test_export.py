"""
Export (tools/export_model.py, fcos_d2/export.py) and the runtime class (fcos_d2/deploy.py):
the exported ONNX model in ONNX Runtime and OpenVINO, the network-only ONNX with numpy
post-processing, and the torch.export program give eager fcos-d2's detections at image
sizes other than the export size; the runtime class runs without torch.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import fcos_d2
from fcos_d2.deploy import (
    ExportedPredictor,
    onednn_allows_bf16,
    postprocess,
)
from fcos_d2.errors import InputError
from fcos_d2.export import compare_with_eager, exported_runners
from fcos_d2.postprocess import PostProcessing
from helpers import ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export_model as export_tool  # noqa: E402

# The README's set-up (tools/setup_env.sh) installs both runtimes: missing is a failure.
import onnxruntime as ort  # noqa: E402

from helpers import tiny_env  # noqa: E402

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
EXPORT_SIZE = (320, 416)
# (h, w) of model inputs, none the export size: one filling the cap of 100 detections,
# one of extreme aspect ratio, odd sizes.
SIZES = [(352, 480), (160, 900), (241, 187), (448, 448)]
BOX_TOL = 1e-2  # px (measured: ~1e-4)
SCORE_TOL = 1e-4


def quickstart_cfg():
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


BOX_BIAS, BOX_WEIGHT = 0.3, 0.5


def detecting_model(cls_bias: float):
    """The quickstart model, untrained, made to detect: raised class bias, boxes of a few
    strides."""
    torch.manual_seed(0)
    model = build_model(quickstart_cfg()).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.mul_(30)
        model.head.cls_logits.bias.fill_(cls_bias)
        model.head.bbox_pred.weight.mul_(BOX_WEIGHT)
        model.head.bbox_pred.bias.fill_(BOX_BIAS)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (model path, eager model)} of the detecting model in every format, and of a
    model that detects nothing (class bias -30) as full ONNX (as .pt2: a slow test)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, bias, formats in [
        ("detecting", -2.0, [("onnx", False), ("onnx", True), ("torch_export", False)]),
        ("empty", -30.0, []),
    ]:
        model = detecting_model(bias)
        weights = str(root / f"{name}.pth")
        torch.save({"model": model.state_dict()}, weights)
        for fmt, network_only in formats:
            argv = [
                "--config-file",
                QUICKSTART,
                "--format",
                fmt,
                "--output",
                str(root / name),
                "--sample-size",
                *map(str, EXPORT_SIZE),
                "MODEL.WEIGHTS",
                weights,
            ]
            if network_only:
                argv.insert(-2, "--network-only")
            path = export_tool.main(argv)
            out[(name, fmt, network_only)] = path
        out[name] = model
        out[(name, "weights")] = weights
    out[("empty", "onnx", False)] = _with_class_bias(
        out[("detecting", "onnx", False)], str(root / "empty"), -30.0
    )
    return out


def _with_class_bias(path: str, folder: str, bias: float) -> str:
    """A copy of the exported ONNX model at ``path`` (and its model.json) whose class-logit
    bias is ``bias``: the export of ``detecting_model(bias)`` (the models differ in that
    bias only), without exporting again (about 20 s)."""
    model = onnx.load(path)
    (init,) = [i for i in model.graph.initializer if i.name.endswith("head.cls_logits.bias")]
    values = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(np.full_like(values, bias), init.name))
    os.makedirs(folder)
    onnx.save(model, os.path.join(folder, "model.onnx"))
    shutil.copy(os.path.splitext(path)[0] + ".json", os.path.join(folder, "model.json"))
    return os.path.join(folder, "model.onnx")


def images():
    g = torch.Generator().manual_seed(7)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in SIZES]


def eager(model, image, original):
    with torch.no_grad():
        inst = model([{"image": image, "height": original[0], "width": original[1]}])[0]
    inst = inst["instances"]
    return inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy()


def assert_same(got, want):
    boxes, scores, classes = (np.asarray(x) for x in got)
    e_boxes, e_scores, e_classes = want
    assert len(scores) == len(e_scores)
    if len(scores):
        assert np.abs(scores - e_scores).max() < SCORE_TOL
        assert (classes == e_classes).all()
        assert np.abs(boxes - e_boxes).max() < BOX_TOL


def runners(exported, name):
    """Callables (image (3, h, w) tensor, original (h, w)) -> (boxes, scores, classes) of
    every exported format of ``name``."""
    funcs = {}
    for key, prefix in [
        ((name, "onnx", False), ""),
        ((name, "onnx", True), "network_only_"),
        ((name, "torch_export", False), ""),
    ]:
        if key in exported:
            for label, run in exported_runners(exported[key], num_threads=2).items():
                funcs[prefix + label] = run
    return funcs


def test_exported_models_match_eager(exported):
    model = exported["detecting"]
    counts = []
    funcs = runners(exported, "detecting")  # loaded once: a .pt2 takes about 8 s
    for image in images():
        original = (image.shape[1] * 2 + 1, image.shape[2] * 2 - 1)  # rescaled outputs
        want = eager(model, image, original)
        counts.append(len(want[1]))
        for label, run in funcs.items():
            try:
                assert_same(run(image, original), want)
            except AssertionError as e:
                raise AssertionError(f"{label} at {tuple(image.shape[1:])}: {e}") from e
    assert max(counts) == 100  # one size fills the per-image cap
    assert min(counts) > 0


def _assert_no_detections(model, funcs):
    for image in images()[:2]:
        original = tuple(image.shape[1:])
        assert len(eager(model, image, original)[1]) == 0
        for label, run in funcs.items():
            boxes, scores, classes = run(image, original)
            assert len(scores) == 0 and boxes.shape == (0, 4), label


def test_exported_models_without_detections(exported):
    _assert_no_detections(exported["empty"], runners(exported, "empty"))


@pytest.mark.slow
def test_pt2_without_detections(exported, tmp_path):
    # The .pt2 twin of the test above (torch.export and loading the program: about 25 s).
    path = export_tool.main(
        ["--config-file", QUICKSTART, "--format", "torch_export", "--output", str(tmp_path)]
        + ["--sample-size", *map(str, EXPORT_SIZE), "MODEL.WEIGHTS", exported[("empty", "weights")]]
    )
    _assert_no_detections(exported["empty"], exported_runners(path))


def test_metadata_and_outputs_are_documented_shapes(exported):
    assert torch.is_grad_enabled()  # exporting left the global grad mode alone
    path = exported[("detecting", "onnx", False)]
    with open(os.path.splitext(path)[0] + ".json") as f:
        meta = json.load(f)
    assert meta["network_only"] is False and meta["num_classes"] == 5
    assert meta["min_size_test"] == 352
    assert meta["postprocessing"]["strides"] == [8, 16, 32, 64, 128]
    session = ort.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["image", "original_size"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "classes", "count"]
    boxes, scores, classes, count = session.run(
        None, {"image": images()[0].numpy(), "original_size": np.array([352, 480])}
    )
    assert boxes.shape == (100, 4) and scores.shape == (100,) and classes.shape == (100,)
    n = int(count)
    assert (scores[:n] >= 0).all() and (scores[n:] == -1).all()
    assert (np.diff(scores[:n]) <= 0).all()  # decreasing


def test_pt2_loads_without_detectron2_and_fcos_d2(exported, tmp_path):
    path = exported[("detecting", "torch_export", False)]
    image = images()[1]
    np.save(tmp_path / "image.npy", image.numpy())
    code = f"""


import sys
import warnings


for name in ("detectron2", "fcos_d2"):
    sys.modules[name] = None  # importing either now fails


import numpy as np, torch, torchvision  # torchvision registers its nms operator


program = torch.export.load({path!r}).module()


image = torch.from_numpy(np.load({str(tmp_path / "image.npy")!r}))


b, s, c, n = program(image, torch.tensor([{image.shape[1]}, {image.shape[2]}]))


n = int(n)


np.savez({str(tmp_path / "out.npz")!r}, boxes=b[:n].numpy(), scores=s[:n].numpy(),
         classes=c[:n].numpy())


assert not any(m.startswith(("detectron2", "fcos_d2")) for m in sys.modules if sys.modules[m])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    want = eager(exported["detecting"], image, tuple(image.shape[1:]))
    assert_same((got["boxes"], got["scores"], got["classes"]), want)
    assert len(want[1]) > 0


def test_runtime_class_runs_without_torch(exported, tmp_path):
    # The whole path of a deployment machine: BGR uint8 image in, detections out, with torch
    # (and so Detectron2 and fcos_d2's model code) impossible to import.
    path = exported[("detecting", "onnx", False)]
    g = np.random.default_rng(3)
    bgr = g.integers(0, 256, (700, 1100, 3), dtype=np.uint8)  # shrunk to 326x512
    np.save(tmp_path / "bgr.npy", bgr)
    code = f"""


import sys
import warnings


sys.modules["torch"] = None


import numpy as np


from fcos_d2.deploy import ExportedPredictor


bgr = np.load({str(tmp_path / "bgr.npy")!r})


for runtime in ("onnxruntime", "openvino"):
    predictor = ExportedPredictor({path!r}, runtime)
    out = predictor(bgr)
    np.savez({str(tmp_path)!r} + "/" + runtime + ".npz", **out)
    # Grayscale, 16-bit, and a 17x999 image padded to the model's minimum: no torch needed.
    gray = predictor(bgr[:, :, 1])["scores"].tolist()
    assert gray == predictor(bgr[:, :, 1:2])["scores"].tolist() and gray != out["scores"].tolist()
    assert predictor(bgr.astype(np.uint16) * 257)["scores"].tolist() == out["scores"].tolist()
    assert (predictor(bgr[:17, :999])["boxes"][:, 3] <= 17).all()


assert not any(m.startswith(("torch", "detectron2")) for m in sys.modules if sys.modules[m])
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # The same as eager fcos-d2 on the runtime class's own resized input.
    predictor = ExportedPredictor(path, "onnxruntime")
    resized = torch.from_numpy(predictor.preprocess(bgr))
    # The pixels of DefaultPredictor's resize (Detectron2's ResizeShortestEdge, PIL).
    channels = bgr[:, :, ::-1] if predictor.meta["input_format"] == "RGB" else bgr
    d2_resized = T.ResizeShortestEdge([352, 352], 512).get_transform(channels).apply_image(channels)
    assert d2_resized.shape[:2] == (326, 512)
    assert torch.equal(resized, torch.from_numpy(d2_resized.transpose(2, 0, 1).astype(np.float32)))
    want = eager(exported["detecting"], resized, bgr.shape[:2])
    assert len(want[1]) > 0
    for runtime in ("onnxruntime", "openvino"):
        got = np.load(tmp_path / f"{runtime}.npz")
        assert_same((got["boxes"], got["scores"], got["classes"]), want)


def test_export_tool_refuses_bad_requests(tmp_path):
    base = ["--config-file", QUICKSTART, "--output", str(tmp_path)]
    with pytest.raises(SystemExit) as e:  # argparse: "invalid choice: 'caffe2'"
        export_tool.main(base + ["--format", "caffe2"])
    assert e.value.code == 2
    with pytest.raises(InputError, match="needs trained weights: MODEL.WEIGHTS"):
        export_tool.main(base + ["--format", "onnx"])
    with pytest.raises(InputError, match="MODEL.WEIGHTS not found: nowhere.pth"):
        export_tool.main(base + ["--format", "onnx", "MODEL.WEIGHTS", "nowhere.pth"])
    weights = str(tmp_path / "w.pth")
    torch.save({"model": build_model(quickstart_cfg()).state_dict()}, weights)
    with pytest.raises(InputError, match="INFERENCE_PRECISION 'bf16'"):
        export_tool.main(
            base
            + [
                "--format",
                "onnx",
                "MODEL.WEIGHTS",
                weights,
                "MODEL.FCOS.INFERENCE_PRECISION",
                "bf16",
            ]
        )
    with pytest.raises(InputError, match="deformable convolution .* has no ONNX export"):
        export_tool.main(
            base
            + ["--format", "onnx", "MODEL.WEIGHTS", weights, "MODEL.FCOS.USE_DEFORMABLE", "True"]
        )
    with pytest.raises(InputError, match="--network-only exports ONNX only"):
        export_tool.main(
            base + ["--format", "torch_export", "--network-only", "MODEL.WEIGHTS", weights]
        )
    with pytest.raises(InputError, match="config file not found"):
        export_tool.main(["--config-file", "missing.yaml", "--format", "onnx", "--output", "x"])
    assert not any(p.suffix in (".onnx", ".pt2") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_exported_torchvision_twin_matches_eager(tmp_path):
    # Converted torchvision weights (configs/compat/FCOS_R50_torchvision.yaml: torchvision's
    # location spacing, sqrt scores, 0.2 threshold): ONNX in both runtimes and .pt2 against
    # eager at four sizes, one of extreme aspect ratio.
    from fcos_d2.export import export_model
    from fcos_d2.reference import fcos_d2_twin, seeded_torchvision_fcos

    tv = seeded_torchvision_fcos(seed=0, num_classes=91)
    model, cfg = fcos_d2_twin(tv)
    model.eval()
    onnx_path = export_model(model, cfg, str(tmp_path), "onnx", sample_size=(320, 480))
    pt2 = torch.export.load(
        export_model(model, cfg, str(tmp_path), "torch_export", sample_size=(320, 480))
    ).module()
    predictors = {name: ExportedPredictor(onnx_path, name) for name in ("onnxruntime", "openvino")}
    g = torch.Generator().manual_seed(11)
    counts = []
    for h, w in [(480, 640), (200, 1000), (517, 389), (800, 1333)]:
        image = torch.rand(3, h, w, generator=g) * 255
        want = eager(model, image, (h, w))
        counts.append(len(want[1]))
        for predictor in predictors.values():
            d = predictor.run_resized(image.numpy(), (h, w))
            assert_same((d["boxes"], d["scores"], d["classes"]), want)
        with torch.no_grad():
            b, s, c, n = pt2(image, torch.tensor([h, w]))
        n = int(n)
        assert_same((b[:n].numpy(), s[:n].numpy(), c[:n].numpy()), want)
    assert min(counts) > 0


# --------------------------------------------- ExportedPredictor's inputs (Predictor's)
def _order_free(out):
    """(boxes, scores, classes) sorted by (class, decreasing score)."""
    boxes, scores, classes = (np.asarray(out[k]) for k in ("boxes", "scores", "classes"))
    order = np.lexsort((-scores, classes))
    return boxes[order], scores[order], classes[order]


def _predictor_detections(predictor, image):
    inst = predictor(image)["instances"]
    return {
        "boxes": inst.pred_boxes.tensor.numpy(),
        "scores": inst.scores.numpy(),
        "classes": inst.pred_classes.numpy(),
    }


@pytest.fixture(scope="module")
def runtime_and_predictor(exported):
    """ExportedPredictor (full ONNX, ONNX Runtime) and fcos_d2's Predictor of one model."""
    from fcos_d2.predictor import Predictor

    cfg = quickstart_cfg()
    cfg.MODEL.WEIGHTS = exported[("detecting", "weights")]
    runtime = ExportedPredictor(exported[("detecting", "onnx", False)], "onnxruntime")
    return runtime, Predictor(cfg)


def test_openvino_bf16_reports_the_precision_it_runs(exported):
    """precision="bf16": bf16 where OpenVINO says the CPU has it (OPTIMIZATION_CAPABILITIES),
    else it runs f32, ``.precision`` says so and a warning names the fallback."""
    import openvino as ov

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    native = native and onednn_allows_bf16()
    path = exported[("detecting", "onnx", False)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = ExportedPredictor(path, "openvino", precision="bf16")
    fallback = [w for w in caught if "not bf16" in str(w.message)]
    assert predictor.precision == ("bf16" if native else "f32")
    assert len(fallback) == (0 if native else 1)
    if not native:
        assert f"OpenVINO runs {path} in f32, not bf16" in str(fallback[0].message)
    out = predictor(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    assert len(out["boxes"]) > 0


def test_runtime_class_converts_images_as_predictor(runtime_and_predictor):
    # Grayscale, BGRA and 16-bit images, which Predictor accepts: the same detections.
    runtime, predictor = runtime_and_predictor
    rng = np.random.default_rng(5)
    bgr = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    gray = bgr[:, :, 1]
    noise = rng.integers(0, 128, bgr.shape).astype(np.uint16)  # rounds away
    variants = {
        "gray HxW": gray,
        "BGRA": np.dstack([bgr, rng.integers(0, 256, (200, 300), dtype=np.uint8)]),
        "BGR 16-bit": bgr.astype(np.uint16) * 257 + noise,
    }
    got = {}
    for label, image in variants.items():
        want = _order_free(_predictor_detections(predictor, image))
        got[label] = _order_free(runtime(image))
        assert len(want[1]) > 0, label
        try:
            assert_same(got[label], want)
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from e
        assert (got[label][0][:, 2] <= 300).all() and (got[label][0][:, 3] <= 200).all()
    # The other grayscale forms: the same as HxW (one conversion, shared with Predictor).
    for image in (gray[:, :, None], gray.astype(np.uint16) * 257):
        assert_same(_order_free(runtime(image)), got["gray HxW"])
    assert not np.array_equal(got["gray HxW"][1], got["BGRA"][1])  # gray is not BGR


def test_runtime_class_input_sizes_and_views(runtime_and_predictor):
    runtime, predictor = runtime_and_predictor
    rng = np.random.default_rng(6)
    big = rng.integers(0, 256, (600, 900, 3), dtype=np.uint8)
    view = big[::2, ::-3]  # strided, negative step: 300x300
    assert_same(_order_free(runtime(view)), _order_free(runtime(view.copy())))
    for shape in [(1, 1, 3), (8, 8, 3), (4000, 6000, 3)]:
        image = np.full(shape, 127, np.uint8)
        out = runtime(image)
        assert out["boxes"].shape[1:] == (4,) and len(out["scores"]) == len(out["classes"])
        assert (out["boxes"][:, 2] <= shape[1]).all() and (out["boxes"][:, 3] <= shape[0]).all()


@pytest.mark.parametrize(
    "image,named",
    [
        (None, "got NoneType"),
        ([[0, 1], [2, 3]], "got list"),
        (np.zeros((0, 0, 3), np.uint8), r"empty image of shape \(0, 0, 3\)"),
        (np.zeros((0, 0), np.uint8), r"empty image of shape \(0, 0\)"),
        (np.zeros((0, 50, 3), np.uint8), r"empty image of shape \(0, 50, 3\)"),
        (np.zeros((20, 20, 2), np.uint8), r"got \(20, 20, 2\)"),
        (np.zeros((20, 20, 3), np.float32), "uint8 or uint16 pixels, got float32"),
        (np.zeros((20, 20, 3), np.int32), "got int32"),
    ],
)
def test_runtime_class_refusals_name_the_input(runtime_and_predictor, image, named):
    runtime, _ = runtime_and_predictor
    with pytest.raises(InputError, match=named):
        runtime(image)


@pytest.mark.parametrize("network_only", [False, True])
def test_runtime_class_pads_images_below_the_exported_minimum(exported, network_only):
    # 17x999 resizes to 9x512 and 40x900 to 23x512, below the model's 129 px: the input is
    # padded bottom/right with the pixel mean (0 once normalised, as Detectron2 pads) and
    # gives what the eager model gives on that padded input, scaled back to the image.
    path = exported[("detecting", "onnx", network_only)]
    runtime = ExportedPredictor(path, "onnxruntime")
    mean = np.asarray(runtime.meta["pixel_mean"], np.float32)
    rng = np.random.default_rng(8)
    for shape, resized in [((17, 999, 3), (9, 512)), ((40, 900, 3), (23, 512))]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        model_input, size = runtime.prepare(image)
        assert size == resized and model_input.shape == (3, 129, 512)
        assert (model_input[:, resized[0] :, :] == mean[:, None, None]).all()
        b, s, c = eager(exported["detecting"], torch.from_numpy(model_input), (129, 512))
        (h, w), (oh, ow) = resized, shape[:2]
        b = np.clip(b * np.float32([ow / w, oh / h, ow / w, oh / h]), 0, None)
        b = np.minimum(b, np.float32([ow, oh, ow, oh]))
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        want = _order_free({"boxes": b[keep], "scores": s[keep], "classes": c[keep]})
        got = _order_free(runtime(image))
        assert len(got[1]) > 0, shape
        assert_same(got, want)
        assert (got[0] >= 0).all() and (got[0][:, [0, 2]] <= ow).all()
        assert (got[0][:, [1, 3]] <= oh).all()


@pytest.mark.slow
def test_export_tool_check_compares_with_eager(exported, tmp_path):
    # tools/export_model.py --check end to end (a fresh process exporting again: about 35 s);
    # the comparison itself is tested by test_parity_check_reports_a_different_model.
    # --check N: N built-in val images and 3 made ones (blank, mosaic, strip), each runtime.
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "export_model.py"),
            "--config-file",
            QUICKSTART,
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "out"),
            "--check",
            "2",
            "MODEL.WEIGHTS",
            exported[("detecting", "weights")],
        ],
        env=tiny_env(str(tmp_path / "cache"), train_images=1, val_images=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    for runtime in ("onnxruntime_f32", "openvino_f32"):
        assert f"{runtime}: 5 images" in proc.stdout
    assert proc.stdout.count("count differs on 0, classes on 0") == 2
    assert "the exported model agrees with eager inference" in proc.stdout


def test_parity_check_reports_a_different_model(exported):
    # The checker must be able to fail: eager weights that are not the exported ones.
    g = torch.Generator().manual_seed(3)
    inputs = [(torch.rand(3, 256, 320, generator=g) * 255, (256, 320))]
    path = exported[("detecting", "onnx", False)]  # loads in 1 s; a .pt2 in about 10 s
    same = compare_with_eager(exported["detecting"], path, inputs)
    assert set(same) == {"onnxruntime_f32", "openvino_f32"}
    assert all(r["agree"] and r["detections"] > 0 for r in same.values())
    other = detecting_model(-2.0)
    with torch.no_grad():
        other.head.bbox_pred.bias.add_(0.05)  # boxes ~5% larger, same scores
    for moved in compare_with_eager(other, path, inputs).values():
        assert not moved["agree"]
        assert moved["count_differs"] + moved["classes_differ"] > 0 or moved["max_box_diff"] > 1e-2


def _config_postprocessings():
    """{PostProcessing: [config names]} of every config in configs/ (compat included), each
    with the strides of its head levels."""
    found: dict = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)):
        cfg = get_cfg()
        fcos_d2.add_fcos_config(cfg)
        cfg.merge_from_file(path)
        strides = (8, 16, 32, 64, 128)[: len(cfg.MODEL.FCOS.IN_FEATURES)]
        setting = PostProcessing.from_config(cfg, strides).replace(
            max_detections=int(cfg.TEST.DETECTIONS_PER_IMAGE)
        )
        found.setdefault(setting, []).append(os.path.relpath(path, os.path.join(ROOT, "configs")))
    return found


CONFIG_POSTPROCESSINGS = _config_postprocessings()


PARITY_SIZES = [(352, 480), (241, 187), (160, 900)]


PARITY_BOX_TOL = 1e-3  # px


def _eager_detections(model, image, original, p: PostProcessing):
    """Eager fcos-d2 (its network, locations and post-processing on the first
    len(p.strides) levels, then Detectron2's detector_postprocess) with settings ``p``."""
    from detectron2.modeling.postprocessing import detector_postprocess

    from fcos_d2.modeling.inference import fcos_inference
    from fcos_d2.modeling.locations import compute_locations
    from fcos_d2.modeling.meta_arch import cat_levels

    n = len(p.strides)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits, box_reg, ctr = (
            x[:n] for x in model.head([features[f] for f in model.head_in_features])
        )
        locations = compute_locations(
            [tuple(x.shape[-2:]) for x in logits],
            p.strides,
            p.location_offset,
            mode=p.location_stride,
            padded_size=tuple(images.tensor.shape[-2:]),
        )
        (inst,) = fcos_inference(
            cat_levels(logits),
            cat_levels(box_reg),
            cat_levels(ctr).squeeze(2),
            torch.cat(locations),
            [len(x) for x in locations],
            images.image_sizes,
            p,
        )
        inst = detector_postprocess(inst, *original)
    return inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy()


def test_config_settings_cover_the_compat_conventions():
    settings = list(CONFIG_POSTPROCESSINGS)
    assert any(p.location_stride == "padded_size_div_grid" for p in settings)
    assert any(p.clip == "image_minus_one" for p in settings)
    assert any(p.nms_plus_one for p in settings) and any(p.sqrt_score for p in settings)
    assert any(p.thresh_with_centerness for p in settings)
    assert any(len(p.strides) == 3 for p in settings)  # FCOS-RT: P3-P5


@pytest.mark.parametrize(
    "setting",
    list(CONFIG_POSTPROCESSINGS),
    ids=[",".join(names) for names in CONFIG_POSTPROCESSINGS.values()],
)
def test_numpy_postprocessing_equals_eager_for_every_config_setting(exported, setting):
    """The network-only ONNX model in ONNX Runtime + fcos_d2.deploy's numpy post-processing
    with the settings of each config against eager fcos-d2 with the same settings."""
    from fcos_d2.postprocess import to_original_size

    model = exported["detecting"]
    session = ort.InferenceSession(exported[("detecting", "onnx", True)])
    g = torch.Generator().manual_seed(11)
    counts = []
    for h, w in PARITY_SIZES:
        image = torch.rand(3, h, w, generator=g) * 255
        original = (int(h * 1.5), int(w * 1.5))
        outputs = session.run(None, {"image": image.numpy()})
        levels = [tuple(outputs[i : i + 3]) for i in range(0, 3 * len(setting.strides), 3)]
        boxes, scores, classes = postprocess(levels, (h, w), setting)
        boxes, keep = to_original_size(boxes, (h, w), original)
        got = boxes[keep], scores[keep], classes[keep]
        want = _eager_detections(model, image, original, setting)
        counts.append(len(want[1]))
        assert len(got[1]) == len(want[1]), (h, w)
        # Order-free: sort both by (class, score) before comparing.
        order_got = np.lexsort((-got[1], got[2]))
        order_want = np.lexsort((-want[1], want[2]))
        assert (got[2][order_got] == want[2][order_want]).all(), (h, w)
        assert np.abs(got[1][order_got] - want[1][order_want]).max() < SCORE_TOL, (h, w)
        assert np.abs(got[0][order_got] - want[0][order_want]).max() < PARITY_BOX_TOL, (h, w)
    assert max(counts) > 0
