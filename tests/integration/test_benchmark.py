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
from benchmarks import ordered, select  # noqa: E402

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
    ("verify", "9b"),
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
        "verify",
    ]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--skip", "nonsense"])
    assert "unknown benchmark section(s) nonsense" in capsys.readouterr().err


#: The sections of one smoke test (the others: the other one; both behind 'slow'). Exporting
#: the R-50 twin (torch.export, ONNX, two INT8 quantizations) and the AP section's exports
#: took 3 of the 4 minutes of a whole smoke run on 2 cores.
EXPORTING = ("export", "ap")


def run_smoke(folder, *selection: str):
    """``tools/benchmark.py --smoke --json ... SELECTION`` in a fresh process: its output and
    JSON."""
    out = folder / "smoke.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    script = os.path.join(ROOT, "tools", "benchmark.py")
    proc = subprocess.run(
        [sys.executable, script, "--smoke", "--json", str(out), *selection],
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


def _ran_every(stdout: str, results: dict, names) -> None:
    for s in select(names):
        assert f"{s.number}. {s.title}" in stdout
        assert s.key in results, f"section {s.name} wrote no {s.key!r}"
        assert results["section_seconds"][s.name] > 0
    assert set(results["section_seconds"]) == set(names)


@pytest.mark.slow  # about 50 s on 2 cores (R-50 twins built, trained and timed)
def test_smoke_run_measures_every_section_but_the_exporting_ones(tmp_path):
    stdout, results = run_smoke(tmp_path, "--skip", *EXPORTING)
    _ran_every(stdout, results, [n for n, _ in EXPECTED_ORDER if n not in EXPORTING])

    # Speeds and their ratios: positive, each ratio the quotient of the speeds it names.
    inf = results["inference"]["128x160"]
    for name in ("torchvision_fp32", "fcos_d2_fp32", "fcos_d2_bf16", "fcos_d2_fp32_plain"):
        assert _positive(inf[name]), name
    ratios = results["ratios"]
    assert ratios["inference_128x160"] == pytest.approx(
        inf["fcos_d2_fp32"] / inf["torchvision_fp32"]
    )
    # The twin finds torchvision's detections.
    assert inf["agreement"]["unmatched"] == 0 and inf["agreement"]["max_box_err"] < 1e-2
    tr = results["train_step"]
    assert ratios["train_step"] == pytest.approx(tr["torchvision_s"] / tr["fcos_d2_s"])

    share = results["fcos_specific"]
    assert 0 < share["train_share"] < 1 and 0 < share["inference_share"] < 1
    assert list(results["assignment"]) == ["10"] and list(results["atss_assignment"]) == ["10"]
    assert results["assignment"]["10"]["peak_rss_growth_mb"] >= 0

    # COCO evaluation: the fast backend gives pycocotools' metrics.
    size = results["coco_size_eval"]
    assert size["images"] == 50 and size["max_abs_stat_diff"] < 1e-6
    aps = [row["AP"] for row in results["coco_eval"].values()]
    assert len(aps) == 2 and max(aps) - min(aps) < 1e-9

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


@pytest.mark.slow  # about 3 minutes on 2 cores
def test_smoke_run_of_the_exporting_sections(tmp_path):
    stdout, results = run_smoke(tmp_path, "--only", *EXPORTING)
    _ran_every(stdout, results, EXPORTING)
    ex = results["inference_export"]
    for name in ("onnxruntime_fp32", "openvino_fp32", "openvino_bf16", "torch_export_fp32"):
        assert _positive(ex[name]), name
    int8 = max(ex["openvino_int8"], ex["onnxruntime_int8"])
    ratios = results["ratios"]
    assert ratios["inference_800x1333_export_int8"] == pytest.approx(int8 / ex["torchvision_fp32"])
    assert ex["int8_vs_export_fp32"] == pytest.approx(int8 / ex[ex["fastest_fp32"]])
    # The exported fp32 paths of the twin find torchvision's detections.
    for name, agreement in ex["agreement"].items():
        assert agreement["unmatched"] == 0, (name, agreement)

    # AP section on an untrained model: every precision and runtime evaluated.
    ap = results["precision_ap"]
    for name in ("fp32", "bf16", "exported_onnxruntime_fp32", "exported_openvino_int8"):
        assert 0 <= ap[name] <= 100, name
