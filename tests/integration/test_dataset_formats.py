"""train_net.py on VOC and YOLO folders written from the built-in data (as
tools/export_dataset.py writes them): 40 training iterations, then --eval-only with each
format's evaluator."""

import pytest
from detectron2.data.datasets import load_coco_json

from fcos_d2.data.builtin import SYNTH_CLASSES, generate_synthetic_coco
from fcos_d2.data.export_formats import write_voc_dataset, write_yolo_dataset
from helpers import QUICKSTART, TINY_OPTS, copypaste_ap, run_train_net, tiny_env

ITERS = ["SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000"]
# The built-in class order, so that the VOC copy's class ids are the model's.
CLASS_NAMES = "disk,rectangle,triangle,ring,cross"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Built-in train (8 images) and val (4) images written as VOC and YOLO folders, as
    tools/export_dataset.py writes them (in this process: a subprocess costs seconds)."""
    base = tmp_path_factory.mktemp("formats")
    for split, n, seed in (("train", 8, 0), ("val", 4, 1)):
        json_file = generate_synthetic_coco(str(base / "coco"), split, n, seed)
        dicts = load_coco_json(json_file, str(base / "coco" / split), "fcos_formats_source")
        write_voc_dataset(dicts, SYNTH_CLASSES, str(base / "voc" / split), split)
        write_yolo_dataset(dicts, SYNTH_CLASSES, str(base / "yolo" / split))
    return base, tiny_env(base / "cache")


def _train_then_eval(base, env, fmt, train_flags, test_flags):
    out = base / f"out_{fmt}"
    log = run_train_net(
        ["--config-file", QUICKSTART, *train_flags, "OUTPUT_DIR", str(out), "DATASETS.TEST", "()"]
        + ITERS
        + TINY_OPTS,
        env,
    ).stdout
    assert "Starting training from iteration 0" in log
    assert (out / "model_final.pth").is_file()
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    eval_out = ["OUTPUT_DIR", str(out / "eval")]
    return run_train_net(
        ["--config-file", QUICKSTART, "--eval-only", *test_flags, *weights, *eval_out, *TINY_OPTS],
        env,
    ).stdout


def test_yolo_folder_trains_and_gets_the_coco_evaluator(exported):
    base, env = exported
    yolo = str(base / "yolo")
    log = _train_then_eval(
        base,
        env,
        "yolo",
        ["--yolo-train", f"{yolo}/train"],
        ["--yolo-test", f"{yolo}/val"],
    )
    assert "Loaded YOLO dataset yolo_user_test" in log
    assert "Evaluation results for bbox" in log  # COCOEvaluator's table
    ap = copypaste_ap(log)
    assert ap is not None and {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(ap)
    assert (base / "out_yolo/eval/inference/yolo_user_test_coco_format.json").is_file()


def test_voc_folder_trains_and_gets_the_voc_evaluator(exported):
    base, env = exported
    voc = str(base / "voc")
    log = _train_then_eval(
        base,
        env,
        "voc",
        ["--voc-train", f"{voc}/train", "train", "--class-names", CLASS_NAMES],
        ["--voc-test", f"{voc}/val", "val", "--class-names", CLASS_NAMES],
    )
    assert "Evaluating voc_user_test using 2012 metric" in log  # the VOC evaluator
    ap = copypaste_ap(log)
    assert ap is not None and set(ap) == {"AP", "AP50", "AP75"}  # the VOC evaluator's keys
