"""FCOS-RT (configs/FCOS_RT_R50_4x.yaml) trains through train_net.py on the built-in data
and its printed AP is that of its detections."""

import os

from helpers import ROOT, builtin_json, copypaste_ap, recomputed_ap, run_train_net, tiny_env

RT = os.path.join(ROOT, "configs", "FCOS_RT_R50_4x.yaml")


def test_trains_on_the_builtin_data_and_evaluates(tmp_path):
    # The FCOS-RT config on a thin ResNet without ImageNet weights: a few iterations and
    # the evaluation at the 512-style test size scaled down.
    opts = [
        "MODEL.WEIGHTS",
        "",
        "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "32",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
        "MODEL.RESNETS.WIDTH_PER_GROUP",
        "16",
        "MODEL.FPN.OUT_CHANNELS",
        "32",
        "MODEL.FCOS.NUM_CLASSES",
        "5",
        "MODEL.FCOS.NUM_CONVS",
        "2",
        "MODEL.FCOS.SIZES_OF_INTEREST",
        "[32, 64]",
        "DATASETS.TRAIN",
        "('fcos_synth_train',)",
        "DATASETS.TEST",
        "('fcos_synth_val',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.STEPS",
        "(2,)",
        "SOLVER.WARMUP_ITERS",
        "1",
        "INPUT.MIN_SIZE_TRAIN",
        "(128, 160)",
        "INPUT.MAX_SIZE_TRAIN",
        "192",
        "INPUT.MIN_SIZE_TEST",
        "128",
        "INPUT.MAX_SIZE_TEST",
        "192",
        "MODEL.FCOS.SCORE_THRESH_TEST",  # detections to evaluate after 3 iterations
        "0.0",
        "OUTPUT_DIR",
        str(tmp_path / "rt"),
    ]
    proc = run_train_net(["--config-file", RT, *opts], tiny_env(tmp_path / "cache"))
    assert "Starting training from iteration 0" in proc.stdout
    assert os.path.isfile(tmp_path / "rt" / "model_final.pth")
    # The printed AP is that of the written detections, recomputed independently.
    ap = copypaste_ap(proc.stdout)
    results = tmp_path / "rt" / "inference" / "coco_instances_results.json"
    recomputed = recomputed_ap(results, builtin_json(tmp_path / "cache", "val"))
    assert abs(ap["AP"] - recomputed["AP"]) < 1e-3 and abs(ap["AP50"] - recomputed["AP50"]) < 1e-3
