"""
Bad input gets a clear error or a counted skip, nothing is lost: dataset files stay
untouched and the last checkpoint stays loadable (issue: reliability).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

import fcos_d2
from fcos_d2.data import generate_synthetic_coco
from fcos_d2.data.checks import sanitize_dataset_dicts
from fcos_d2.errors import InputError
from fcos_d2.predictor import Predictor, to_bgr_uint8
from helpers import (
    QUICKSTART,
    ROOT,
    TINY_OPTS,
    TRAIN_NET,
    metrics,
    run_train_net,
    start_iteration,
    tiny_env,
)

SHORT = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "0", *TINY_OPTS]


def _digest(folder) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture()
def user_data(tmp_path):
    """A small COCO-format dataset (json + PNGs) in tmp_path/data."""
    json_file = generate_synthetic_coco(str(tmp_path / "data"), "train", 6, seed=5)
    return {"json": json_file, "images": str(tmp_path / "data" / "train"), "tmp": tmp_path}


def _edit_json(user_data, edit) -> str:
    with open(user_data["json"]) as f:
        data = json.load(f)
    edit(data)
    path = str(user_data["tmp"] / "edited.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _train_user(user_data, json_file, *extra, check=False):
    env = tiny_env(user_data["tmp"] / "cache")
    out = str(user_data["tmp"] / "out")
    args = [
        "--config-file",
        QUICKSTART,
        "--coco-train",
        json_file,
        user_data["images"],
        "OUTPUT_DIR",
        out,
        "DATASETS.TEST",
        "()",
        *SHORT,
        *extra,
    ]
    return run_train_net(args, env, check=check)


# ------------------------------------------------------------------------- data
def test_missing_image_file_is_named_and_nothing_is_touched(user_data):
    before = _digest(os.path.dirname(user_data["json"]))
    missing = os.path.join(user_data["images"], "000003.png")
    os.rename(missing, missing + ".away")
    proc = _train_user(user_data, user_data["json"])
    assert proc.returncode != 0
    assert "not found" in proc.stdout and "000003.png" in proc.stdout
    os.rename(missing + ".away", missing)
    assert _digest(os.path.dirname(user_data["json"])) == before


def test_unreadable_image_is_skipped_and_named(user_data):
    # 6 iterations of 2 images over 6 images: every image comes up at least once. The bad
    # one is logged with its file and id, and replaced (DATALOADER.MAX_BAD_IMAGES; the
    # stop after too many, and DATALOADER.VERIFY_IMAGES: tests/unit/data/test_verify.py).
    path = os.path.join(user_data["images"], "000002.png")
    with open(path, "wb") as f:
        f.write(b"this is not a png")
    proc = _train_user(user_data, user_data["json"], "SOLVER.MAX_ITER", "6")
    assert proc.returncode == 0, proc.stdout[-3000:]
    skipped = [line for line in proc.stdout.splitlines() if "Skipped training image" in line]
    assert len(skipped) == 1, skipped  # read once, then known bad
    assert re.search(r"000002.png \(image id \d+\): UnidentifiedImageError", skipped[0])


def test_image_size_disagreeing_with_annotation(user_data):
    def shrink(data):
        data["images"][0]["width"] += 7

    proc = _train_user(user_data, _edit_json(user_data, shrink), "SOLVER.MAX_ITER", "6")
    assert proc.returncode != 0
    assert "Mismatched image shape" in proc.stdout and "000000.png" in proc.stdout


def test_class_count_mismatch_is_a_clear_error(user_data):
    proc = _train_user(user_data, user_data["json"], "MODEL.FCOS.NUM_CLASSES", "3")
    assert proc.returncode == 2
    assert "has 5 categories but MODEL.FCOS.NUM_CLASSES is 3" in proc.stdout


def _record(boxes, width=100, height=80, cats=None, crowd=None):
    annos = []
    for i, b in enumerate(boxes):
        annos.append(
            {
                "bbox": b,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": (cats or [0] * len(boxes))[i],
                "iscrowd": (crowd or [0] * len(boxes))[i],
            }
        )
    return {
        "file_name": __file__,
        "image_id": 7,
        "width": width,
        "height": height,
        "annotations": annos,
    }


def test_degenerate_boxes_are_dropped_or_clipped_and_counted():
    nan = float("nan")
    rec = _record(
        [
            [10, 10, 20, 20],  # fine
            [10, 10, 0, 5],  # zero width: dropped
            [10, 10, -3, 5],  # negative width: dropped
            [nan, 10, 5, 5],  # NaN: dropped
            [150, 10, 5, 5],  # outside the 100x80 image: dropped
            [90, 70, 20, 20],  # partly outside: clipped to [90, 70, 10, 10]
            [0, 0, 50, 50],
        ],  # crowd: counted, kept for Detectron2 to ignore
        crowd=[0, 0, 0, 0, 0, 0, 1],
    )
    empty = _record([])
    original = json.dumps(rec, default=str)
    dicts, report = sanitize_dataset_dicts([rec, empty], num_classes=2)
    assert json.dumps(rec, default=str) == original  # the input is not modified
    kept = dicts[0]["annotations"]
    assert [a["bbox"] for a in kept] == [[10, 10, 20, 20], [90.0, 70.0, 10.0, 10.0], [0, 0, 50, 50]]
    assert (report.dropped_boxes, report.clipped_boxes, report.crowd_boxes) == (4, 1, 1)
    assert report.images_without_boxes == 1 and report.boxes == 2
    assert "annotation 1" in report.summary() and "image id 7" in report.summary()


def test_class_id_outside_num_classes_names_image_and_annotation():
    rec = _record([[1, 1, 5, 5], [1, 1, 5, 5]], cats=[0, 4])
    with pytest.raises(
        InputError, match=r"image id 7\): annotation 1 has class id 4 outside \[0, 3\)"
    ):
        sanitize_dataset_dicts([rec], num_classes=3)


def test_training_with_degenerate_boxes_logs_the_counts(user_data):
    def spoil(data):
        data["annotations"][0]["bbox"] = [5, 5, 0, 0]
        data["annotations"][1]["bbox"][0] = -20.0  # partly outside
        data["annotations"][2]["iscrowd"] = 1

    proc = _train_user(user_data, _edit_json(user_data, spoil), check=True)
    assert (
        "1 degenerate boxes dropped, 1 clipped to their image, 1 crowd boxes ignored" in proc.stdout
    )


# ------------------------------------------------------------------- config / CLI
def test_unknown_config_key(tmp_path):
    proc = run_train_net(
        ["--config-file", QUICKSTART, "MODEL.FCOS.NUM_CONV", "1"],
        tiny_env(tmp_path),
        check=False,
    )
    assert proc.returncode == 2
    assert (
        "command-line config override: unknown config key MODEL.FCOS.NUM_CONV "
        "(did you mean MODEL.FCOS.NUM_CONVS?)" in proc.stdout
    )
    assert "Traceback" not in proc.stdout


def test_eval_only_without_or_with_missing_weights(tmp_path):
    env = tiny_env(tmp_path)
    proc = run_train_net(["--config-file", QUICKSTART, "--eval-only", *TINY_OPTS], env, check=False)
    assert proc.returncode == 2 and "--eval-only needs weights" in proc.stdout
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(tmp_path / "nope.pth"),
            *TINY_OPTS,
        ],
        env,
        check=False,
    )
    assert proc.returncode == 2 and "MODEL.WEIGHTS not found" in proc.stdout


def _tiny_cfg(**fcos):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(TINY_OPTS)
    cfg.MODEL.DEVICE = "cpu"
    for k, v in fcos.items():
        setattr(cfg.MODEL.FCOS, k, v)
    return cfg


def test_checkpoint_with_another_number_of_classes_is_refused(tmp_path):
    cfg = _tiny_cfg(NUM_CLASSES=7)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("other")
    weights = str(tmp_path / "other.pth")
    proc = run_train_net(
        ["--config-file", QUICKSTART, "--eval-only", "MODEL.WEIGHTS", weights, *TINY_OPTS],
        tiny_env(tmp_path / "cache"),
        check=False,
    )
    assert proc.returncode == 2
    assert "head.cls_logits.weight (checkpoint (7, 32, 3, 3), model (5, 32, 3, 3))" in proc.stdout
    cfg5 = _tiny_cfg()
    cfg5.MODEL.WEIGHTS = weights
    with pytest.raises(InputError, match="head.cls_logits.bias"):
        Predictor(cfg5)


# ------------------------------------------------------------------------ predictor
def test_to_bgr_uint8_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_bgr_uint8(gray)
    assert out.shape == (3, 4, 3) and (out == gray[:, :, None]).all()
    bgra = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    assert (to_bgr_uint8(bgra) == bgra[:, :, :3]).all()
    deep = np.array([[0, 257, 65535]], dtype=np.uint16)
    assert to_bgr_uint8(deep)[0, :, 0].tolist() == [0, 1, 255]
    with pytest.raises(InputError, match="uint8 or uint16"):
        to_bgr_uint8(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(2, 2, 2\)"):
        to_bgr_uint8(np.zeros((2, 2, 2), dtype=np.uint8))


def test_predictor_accepts_gray_rgba_and_16bit(tmp_path):
    cfg = _tiny_cfg(SCORE_THRESH_TEST=0.0)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("w")
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    predictor = Predictor(cfg)
    bgr = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    variants = {
        "gray": gray,
        "gray3": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
        "bgra": np.dstack([bgr, np.full((60, 80), 255, np.uint8)]),
        "bgr": bgr,
        "bgr16": bgr.astype(np.uint16) * 257,
    }
    outs = {k: predictor(v)["instances"] for k, v in variants.items()}
    for out in outs.values():
        assert out.image_size == (60, 80) and len(out) > 0
    torch.testing.assert_close(outs["gray"].scores, outs["gray3"].scores)
    torch.testing.assert_close(outs["bgra"].scores, outs["bgr"].scores)
    torch.testing.assert_close(outs["bgr16"].scores, outs["bgr"].scores)


# -------------------------------------------------------- non-finite loss / kill
@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    """A finished 4-iteration run with checkpoints at iterations 1 and 3 (final)."""
    base = tmp_path_factory.mktemp("run4")
    env = tiny_env(base / "cache")
    out = base / "out"
    run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.STEPS",
            "(3,)",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "TEST.EVAL_PERIOD",
            "0",
            *TINY_OPTS,
        ],
        env,
    )
    return {"env": env, "out": out}


def test_non_finite_loss_stops_with_its_name_and_keeps_the_checkpoint(run4):
    out = run4["out"]
    before = (out / "model_final.pth").read_bytes()
    # Resume with a config that makes every input infinite: the losses go NaN at once.
    proc = run_train_net(
        [
            "--config-file",
            QUICKSTART,
            "--resume",
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_ITER",
            "8",
            "SOLVER.STEPS",
            "(3,)",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
            "TEST.EVAL_PERIOD",
            "0",
            "MODEL.PIXEL_STD",
            "[0.0, 0.0, 0.0]",
            *TINY_OPTS,
        ],
        run4["env"],
        check=False,
    )
    assert proc.returncode != 0
    assert "non-finite loss at iteration 4: loss_fcos_cls=nan" in proc.stdout
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "model_final.pth").read_bytes() == before
    assert not (out / "model_0000004.pth").exists()
    model = build_model(_tiny_cfg())
    DetectionCheckpointer(model).load(str(out / "model_final.pth"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# train_net.py in a process that SIGKILLs itself in the middle of writing its third
# checkpoint: after part of the file is written, before it is complete.
_KILLED_MID_WRITE = r"""
import os, runpy, signal, sys
import torch
saves, real_save = [], torch.save
def save(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 3:
        f.write(b"PK-partial")  # the start of a checkpoint file...
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_training_resumes_from_the_last_checkpoint(tmp_path):
    env = tiny_env(tmp_path / "cache")
    out = tmp_path / "out"
    args = [
        "--config-file",
        QUICKSTART,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "400",
        "SOLVER.STEPS",
        "(300,)",
        "SOLVER.CHECKPOINT_PERIOD",
        "3",
        "TEST.EVAL_PERIOD",
        "0",
        *TINY_OPTS,
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, TRAIN_NET, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL
    tag = out / "last_checkpoint"
    # Checkpoints at iterations 2 and 5 are complete; the one of iteration 8 died mid-write
    # and never reached its name.
    assert tag.read_text() == "model_0000005.pth"
    assert not (out / "model_0000008.pth").exists()
    last = tag.read_text()
    saved_iter = int(last[len("model_") : -len(".pth")])
    DetectionCheckpointer(build_model(_tiny_cfg())).load(str(out / last))  # loadable
    shutil.copy(out / "metrics.json", tmp_path / "metrics_before.json")
    resumed = run_train_net(
        [*args[:2], "--resume", *args[2:4], "SOLVER.MAX_ITER", str(saved_iter + 4), *args[6:]],
        env,
    )
    assert start_iteration(resumed.stdout) == saved_iter + 1
    assert (out / "model_final.pth").exists()
    assert [r["iteration"] for r in metrics(out) if "loss_fcos_cls" in r][-1] == saved_iter + 3
