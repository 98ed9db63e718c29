"""tools/benchmark.py and its sections (tools/benchmarks/): the section registry, and a run of
every section at its smallest setting (--smoke) with the JSON it writes."""

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import benchmark  # noqa: E402
from benchmarks import SECTIONS, ordered, select  # noqa: E402

#: Every section, as the docs number them; a full run measures them in this order.
EXPECTED_ORDER = [
    ("inference", "1"),
    ("export", "1b"),
    ("train", "2"),
    ("share", "3"),
    ("assign", "4"),
    ("coco", "5"),
    ("ap", "6"),
    ("cocosize", "7"),
    ("loader", "8"),
    ("checks", "9"),
    ("atss", "10"),
    ("rt", "11"),
]


def test_every_section_is_registered_once_in_the_documented_order():
    assert [(s.name, s.number) for s in ordered()] == EXPECTED_ORDER
    keys = [s.key for s in ordered()]
    assert len(set(keys)) == len(keys)


def test_only_and_skip_select_by_name():
    assert [s.name for s in select(["rt", "inference"])] == ["inference", "rt"]
    skipped = [s.name for s in select(skip=["export", "ap"])]
    assert skipped == [n for n, _ in EXPECTED_ORDER if n not in ("export", "ap")]
    assert [s.name for s in select(["ap", "rt"], ["rt"])] == ["ap"]
    with pytest.raises(ValueError, match="unknown benchmark section.*exprot.*export"):
        select(["exprot"])


def test_scale_runs_the_sections_at_scale_and_bad_names_are_refused(capsys):
    assert [s.name for s in benchmark.parse_args(["--scale"]).sections] == [
        "cocosize",
        "loader",
        "checks",
    ]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--skip", "nonsense"])
    assert "unknown benchmark section(s) nonsense" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``tools/benchmark.py --smoke --json`` in a fresh process: its output and JSON."""
    out = tmp_path_factory.mktemp("benchmark") / "smoke.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "benchmark.py"),
            "--smoke",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_smoke_run_measures_every_section(smoke):
    stdout, results = smoke
    for s in ordered():
        assert f"{s.number}. {s.title}" in stdout
        assert s.key in results, f"section {s.name} wrote no {s.key!r}"
    assert set(SECTIONS) == {n for n, _ in EXPECTED_ORDER}

    # Speeds and their ratios: positive, each ratio the quotient of the speeds it names.
    inf = results["inference"]["128x160"]
    for name in ("torchvision_fp32", "fcos_d2_fp32", "fcos_d2_bf16", "fcos_d2_fp32_plain"):
        assert _positive(inf[name]), name
    ratios = results["ratios"]
    assert ratios["inference_128x160"] == pytest.approx(
        inf["fcos_d2_fp32"] / inf["torchvision_fp32"]
    )
    ex = results["inference_export"]
    for name in ("onnxruntime_fp32", "openvino_fp32", "openvino_bf16", "torch_export_fp32"):
        assert _positive(ex[name]), name
    int8 = max(ex["openvino_int8"], ex["onnxruntime_int8"])
    assert ratios["inference_800x1333_export_int8"] == pytest.approx(int8 / ex["torchvision_fp32"])
    assert ex["int8_vs_export_fp32"] == pytest.approx(int8 / ex[ex["fastest_fp32"]])
    # The exported fp32 paths of the twin find torchvision's detections.
    for name, agreement in ex["agreement"].items():
        assert agreement["unmatched"] == 0, (name, agreement)
    tr = results["train_step"]
    assert ratios["train_step"] == pytest.approx(tr["torchvision_s"] / tr["fcos_d2_s"])

    share = results["fcos_specific"]
    assert 0 < share["train_share"] < 1 and 0 < share["inference_share"] < 1
    assert list(results["assignment"]) == ["10"] and list(results["atss_assignment"]) == ["10"]
    assert results["assignment"]["10"]["peak_rss_growth_mb"] >= 0

    # COCO evaluation: the fast backend gives pycocotools' metrics.
    size = results["coco_size_eval"]
    assert size["images"] == 50 and size["max_abs_stat_diff"] < 1e-6
    coco = results["coco_eval"]
    aps = [row["AP"] for row in coco.values()]
    assert len(aps) == 2 and max(aps) - min(aps) < 1e-9

    # AP section on an untrained model: every precision and runtime evaluated.
    ap = results["precision_ap"]
    for name in ("fp32", "bf16", "exported_onnxruntime_fp32", "exported_openvino_int8"):
        assert 0 <= ap[name] <= 100, name

    loader = results["train_loader"]
    assert _positive(loader["loader_workers0_images_per_s"])
    assert loader["input_size"] == [120, 160]  # 480x640 at shorter side 128, longer <= 160
    checks = results["dataset_checks"]
    assert checks["images"] == 300 and 0 < checks["checks_share"]
    assert _positive(results["fcos_rt_inference"]["rt_speedup"])

    # What the reduced-precision paths ran in, by the CPU's capability ("auto").
    ran = results["precision_ran"]
    expected = "bf16" if results["cpu"]["native_bf16"] else "fp32"
    assert ran["inference_bf16"] == expected and ran["train_step_bf16"] == expected
