"""
Training at scale on the CPU (GLOO): train_net.py under torchrun, as two "machines" with
Detectron2's flags, and as SLURM tasks trains exactly as ``--num-gpus 2`` under launch;
a torchrun restart resumes from the last checkpoint; ``--eval-only`` on 2 workers gives
the AP of 1 worker; the launcher environment is read and checked (dist_env).
"""

import copy
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from helpers import (
    QUICKSTART,
    ROOT,
    TINY_OPTS,
    TRAIN_NET,
    copypaste_ap,
    metrics,
    run_train_net,
    start_iteration,
    tiny_env,
)

from fcos_d2.data.checks import sanitize_dataset_dicts
from fcos_d2.engine.dist_env import (
    ProcessGroupEnv,
    check_launch_args,
    detect_process_group_env,
    first_slurm_host,
)
from fcos_d2.errors import InputError

# ------------------------------------------------------------------ environment parsing
TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
         "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "gpu[07-08]",
         "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0"}  # fmt: skip


@pytest.mark.parametrize(
    "nodelist, host",
    [("node1", "node1"), ("node[03-05,9],gpu1", "node03"), ("gpu1,node[03-05]", "gpu1"),
     ("a[1-2]b[7,8]", "a1b7"), ("rack1-n[010-012]", "rack1-n010"), ("10.1.2.3", "10.1.2.3")],
)  # fmt: skip
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_first_slurm_host_refuses_malformed_lists():
    for bad in ("", "node[", "node[]"):
        with pytest.raises(InputError, match="SLURM_JOB_NODELIST"):
            first_slurm_host(bad)


def test_torchrun_environment():
    pg = detect_process_group_env(TORCHRUN)
    assert pg == ProcessGroupEnv("torchrun", 3, 4, 1, 2, "10.0.0.1", 29500)
    assert (pg.num_machines, pg.machine_rank, pg.init_method) == (2, 1, "env://")
    assert detect_process_group_env({"PATH": "/bin", "MASTER_PORT": "1"}) is None


def test_half_set_torchrun_environment_names_the_missing_variables():
    env = {k: TORCHRUN[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    with pytest.raises(InputError) as e:
        detect_process_group_env(env)
    assert "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_PORT missing" in str(e.value)


def test_slurm_environment():
    # Rank 5 of 8 with 4 tasks per machine: machine 1; master on the list's first host and
    # port 15000 + 123456 % 20000 = 18456.
    pg = detect_process_group_env(SLURM)
    assert pg == ProcessGroupEnv("SLURM", 5, 8, 1, 4, "gpu07", 18456)
    assert pg.init_method == "tcp://gpu07:18456" and pg.machine_rank == 1
    env = dict(SLURM, MASTER_ADDR="10.0.0.9", MASTER_PORT="4000")
    assert detect_process_group_env(env).init_method == "tcp://10.0.0.9:4000"
    del env["SLURM_NTASKS_PER_NODE"]
    assert detect_process_group_env(dict(env, SLURM_TASKS_PER_NODE="4(x2)")).local_world_size == 4
    with pytest.raises(InputError, match=r"SLURM_TASKS_PER_NODE=4\(x1\),3: .*different numbers"):
        detect_process_group_env(dict(env, SLURM_TASKS_PER_NODE="4(x1),3", SLURM_NTASKS="7"))


def test_slurm_single_task_or_batch_script_is_not_a_group():
    # One task (e.g. the batch script of `sbatch --ntasks 1`): --num-gpus spawns as usual.
    assert detect_process_group_env(dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0")) is None
    assert detect_process_group_env({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) is None


def test_half_set_slurm_environment_names_the_missing_variables():
    with pytest.raises(InputError, match="SLURM_PROCID set but SLURM_NTASKS missing"):
        detect_process_group_env({"SLURM_PROCID": "1"})
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    with pytest.raises(InputError) as e:
        detect_process_group_env(env)
    for name in ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST", "MASTER_PORT"):
        assert name in str(e.value)


def test_inconsistent_or_ambiguous_environments():
    with pytest.raises(InputError, match="inconsistent torchrun environment: RANK=4, WORLD_SIZE=4"):
        detect_process_group_env(dict(TORCHRUN, RANK="4"))
    # Cyclic task distribution: rank 1 is machine 1's first task.
    with pytest.raises(InputError, match="not consecutive"):
        detect_process_group_env(dict(SLURM, SLURM_PROCID="1", SLURM_LOCALID="0"))
    # Both sets, set by hand, describing different groups.
    with pytest.raises(InputError, match="ambiguous environment: .* rank 3 of 4, .* rank 5 of 8"):
        detect_process_group_env({**SLURM, **TORCHRUN})
    # srun started torchrun: torchrun's own variables win.
    pg = detect_process_group_env({**SLURM, **TORCHRUN, "TORCHELASTIC_RUN_ID": "x"})
    assert pg.source == "torchrun" and pg.rank == 3


def test_arguments_that_contradict_the_environment():
    pg = detect_process_group_env(TORCHRUN)  # 2 machines x 2 workers, this is machine 1
    for ok in [(1, 1, 0), (2, 1, 0), (2, 2, 1), (1, 2, 1)]:
        check_launch_args(pg, *ok)
    with pytest.raises(InputError, match="--num-gpus 8 contradicts the torchrun environment"):
        check_launch_args(pg, 8, 1, 0)
    with pytest.raises(InputError, match="--num-machines 3 contradicts"):
        check_launch_args(pg, 1, 3, 0)
    with pytest.raises(InputError, match="--machine-rank 2 contradicts .* machine 1"):
        check_launch_args(pg, 1, 2, 2)


def test_train_net_refuses_num_gpus_that_contradicts_torchrun(tmp_path):
    env = dict(tiny_env(tmp_path / "cache"), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0",
               LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")  # fmt: skip
    proc = run_train_net(["--config-file", QUICKSTART, "--num-gpus", "4"], env, check=False)
    assert proc.returncode == 2
    assert "--num-gpus 4 contradicts the torchrun environment" in proc.stdout
    assert "Traceback" not in proc.stdout


# ----------------------------------------------------------------- 2-worker training runs
MAX_ITER = 12
SCHEDULE = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.STEPS", "(9,)",
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "1", "DATASETS.TEST", "()",
            *TINY_OPTS[2:]]  # fmt: skip
LOSS_KEYS = ("iteration", "lr", "total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun():
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [exe] if os.path.isfile(exe) else [sys.executable, "-m", "torch.distributed.run"]


def _run_all(cmds, env, timeout=600):
    """Start the commands together (they form one group) and wait for all; (rc, log) each."""
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd, e in zip(cmds, env)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [(p.returncode, log) for p, log in zip(procs, logs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _losses(out):
    """Per-iteration losses and LR of metrics.json (every iteration: SOLVER.LOG_PERIOD 1)."""
    return [{k: r[k] for k in LOSS_KEYS} for r in metrics(out) if "loss_fcos_cls" in r]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _files(out):
    """The output folder's files, the event file's name reduced to its prefix."""
    names = []
    for name in sorted(os.listdir(out)):
        names.append("events.out.tfevents" if name.startswith("events.out.tfevents") else name)
    return names


def _check_one_copy(out):
    """Only rank 0 wrote checkpoints, metrics and events; rank 1 logged to log.txt.rank1."""
    assert len(glob.glob(os.path.join(out, "events.out.tfevents*"))) == 1
    assert [r["iteration"] for r in _losses(out)] == list(range(MAX_ITER))
    with open(os.path.join(out, "log.txt")) as f:
        assert "Rank of current process: 0. World size: 2" in f.read()
    with open(os.path.join(out, "log.txt.rank1")) as f:
        assert "Rank of current process: 1. World size: 2" in f.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run every launcher is compared with: ``--num-gpus 2`` under launch."""
    base = tmp_path_factory.mktemp("scale")
    env = tiny_env(base / "cache")
    out = base / "launch"
    run_train_net(["--config-file", QUICKSTART, "--num-gpus", "2", "OUTPUT_DIR", str(out),
                   *SCHEDULE], env)  # fmt: skip
    _check_one_copy(out)
    return {"base": base, "env": env, "out": out}


def _launch_torchrun(out, env):
    cmd = [*_torchrun(), "--nproc-per-node", "2", TRAIN_NET, "--config-file", QUICKSTART,
           "OUTPUT_DIR", str(out), *SCHEDULE]  # fmt: skip
    return _run_all([cmd], [env])


def _launch_two_machines(out, env):
    url = f"tcp://127.0.0.1:{_free_port()}"
    cmds = [[sys.executable, TRAIN_NET, "--config-file", QUICKSTART, "--num-machines", "2",
             "--machine-rank", str(r), "--dist-url", url, "OUTPUT_DIR", str(out), *SCHEDULE]
            for r in range(2)]  # fmt: skip
    return _run_all(cmds, [env, env])


def _launch_slurm(out, env):
    port = str(_free_port())
    envs = [dict(env, SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                 SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost", MASTER_PORT=port)
            for r in range(2)]  # fmt: skip
    cmd = [sys.executable, TRAIN_NET, "--config-file", QUICKSTART, "OUTPUT_DIR", str(out),
           *SCHEDULE]  # fmt: skip
    return _run_all([cmd, cmd], envs)


@pytest.mark.parametrize("launcher", ["torchrun", "two_machines", "slurm"])
def test_launcher_trains_as_launch_with_two_workers(reference, launcher):
    out = reference["base"] / launcher
    start = {"torchrun": _launch_torchrun, "two_machines": _launch_two_machines,
             "slurm": _launch_slurm}[launcher]  # fmt: skip
    for rc, log in start(out, reference["env"]):
        assert rc == 0, log[-5000:]
    _check_one_copy(out)
    assert _files(out) == _files(reference["out"])
    assert _losses(out) == _losses(reference["out"])
    _assert_same_weights(_weights(out / "model_final.pth"),
                         _weights(reference["out"] / "model_final.pth"))  # fmt: skip


PROBE = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
from detectron2.utils import comm
from fcos_d2.engine import launch

def probe(out):
    local = [None] * comm.get_local_size()
    dist.all_gather_object(local, comm.get_rank(), group=comm._LOCAL_PROCESS_GROUP)
    info = dict(rank=comm.get_rank(), world=comm.get_world_size(), local_rank=comm.get_local_rank(),
                local_size=comm.get_local_size(), all=comm.all_gather(comm.get_rank()),
                local=local, main=comm.is_main_process())
    with open(os.path.join(out, "rank%d.json" % comm.get_rank()), "w") as f:
        json.dump(info, f)

launch(probe, 1, args=(sys.argv[1],))
"""


def test_comm_helpers_in_a_slurm_job_of_two_machines(tmp_path):
    # 4 SLURM tasks, 2 per machine (block distribution): Detectron2's comm and its
    # per-machine process group see ranks {0, 1} and {2, 3} as machines.
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT))
    env = tiny_env(tmp_path / "cache")
    envs = [dict(env, SLURM_PROCID=str(r), SLURM_NTASKS="4", SLURM_LOCALID=str(r % 2),
                 SLURM_TASKS_PER_NODE="2(x2)", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(_free_port())) for r in range(4)]  # fmt: skip
    for e in envs:
        e["MASTER_PORT"] = envs[0]["MASTER_PORT"]
    for rc, log in _run_all([[sys.executable, str(script), str(tmp_path)]] * 4, envs):
        assert rc == 0, log[-3000:]
    for r in range(4):
        info = json.loads((tmp_path / f"rank{r}.json").read_text())
        machine = [0, 1] if r < 2 else [2, 3]
        assert info == {"rank": r, "world": 4, "local_rank": r % 2, "local_size": 2,
                        "all": [0, 1, 2, 3], "local": machine, "main": r == 0}  # fmt: skip


def _children(pid):
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(env.get(b"RANK", b"-1"))


@pytest.mark.slow  # about 50 s on 2 busy cores (3 runs of 2 workers, one of them restarted)
def test_torchrun_restart_resumes_from_the_last_checkpoint(reference):
    out = reference["base"] / "restart"
    cmd = [*_torchrun(), "--nproc-per-node", "2", "--max-restarts", "1", TRAIN_NET,
           "--config-file", QUICKSTART, "--resume", "OUTPUT_DIR", str(out), *SCHEDULE]  # fmt: skip
    agent = subprocess.Popen(cmd, cwd=ROOT, env=reference["env"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        tag, deadline = out / "last_checkpoint", time.time() + 300
        while time.time() < deadline and not tag.exists():
            time.sleep(0.05)
        assert tag.exists(), "no checkpoint before the deadline"
        worker = [p for p in _children(agent.pid) if _rank_of(p) == 1]
        assert len(worker) == 1, worker
        os.kill(worker[0], signal.SIGKILL)
        log = agent.communicate(timeout=600)[0]
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, log[-5000:]
    resumed_from = start_iteration(log) - 1
    assert 0 < resumed_from < MAX_ITER - 1 and resumed_from % 2 == 1, log[-5000:]
    assert [r["iteration"] for r in _losses(out)][-1] == MAX_ITER - 1
    # Up to the checkpoint it resumed from, the job trained as the uninterrupted run.
    ckpt = f"model_{resumed_from:07d}.pth"
    _assert_same_weights(_weights(out / ckpt), _weights(reference["out"] / ckpt))
    # From there it trained as `--resume` from that checkpoint under launch. (Not as the
    # uninterrupted run: a resumed job's data loader starts its sample stream and its
    # augmentation RNG afresh, in Detectron2 as here.)
    again = reference["base"] / "resume_launch"
    again.mkdir()
    shutil.copy(reference["out"] / ckpt, again / ckpt)
    (again / "last_checkpoint").write_text(ckpt)
    run_train_net(["--config-file", QUICKSTART, "--num-gpus", "2", "--resume", "OUTPUT_DIR",
                   str(again), *SCHEDULE], reference["env"])  # fmt: skip
    _assert_same_weights(_weights(out / "model_final.pth"), _weights(again / "model_final.pth"))
    assert _losses(out)[-(MAX_ITER - 1 - resumed_from) :] == _losses(again)
    # ... and so it ends elsewhere than the uninterrupted run (README, Training at scale).
    final = _weights(out / "model_final.pth")
    uninterrupted = _weights(reference["out"] / "model_final.pth")
    assert not all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_eval_only_with_two_workers_gives_the_ap_of_one(reference):
    # The trained weights with a box branch that predicts a square of 2 strides around
    # every location: 12 iterations leave AP at 0, these squares hit some objects.
    model = _weights(reference["out"] / "model_final.pth")
    model["head.bbox_pred.weight"].zero_()
    model["head.bbox_pred.bias"].fill_(1.0)
    for name, value in model.items():
        if name.startswith("head.scales."):
            value.fill_(1.0)
    weights = reference["base"] / "squares.pth"
    torch.save({"model": model}, weights)
    opts = ["--config-file", QUICKSTART, "--eval-only", "MODEL.WEIGHTS", str(weights),
            "MODEL.FCOS.SCORE_THRESH_TEST", "0.0", *TINY_OPTS]  # fmt: skip
    one, two = reference["base"] / "eval1", reference["base"] / "eval2"
    log1 = run_train_net([*opts, "OUTPUT_DIR", str(one)], reference["env"]).stdout
    [(rc, log2)] = _run_all([[*_torchrun(), "--nproc-per-node", "2", TRAIN_NET, *opts,
                              "OUTPUT_DIR", str(two)]], [reference["env"]])  # fmt: skip
    assert rc == 0, log2[-5000:]
    # The 8 val images were split between the workers; rank 0 gathered the detections.
    assert "Start inference on 8 batches" in log1 and "Start inference on 4 batches" in log2
    ap1, ap2 = copypaste_ap(log1), copypaste_ap(log2)
    assert ap1 == ap2 and ap1["AP50"] > 0, (ap1, ap2)

    def detections(folder):
        with open(folder / "inference" / "coco_instances_results.json") as f:
            return sorted(json.dumps(d, sort_keys=True) for d in json.load(f))

    assert detections(one) == detections(two) and len(detections(one)) > 8


# ------------------------------------------------------------- dataset checks, vectorised
def _reference_check(record, num_classes):
    """Per box, from sanitize_dataset_dicts' contract: (kept annotations, dropped, clipped)."""
    kept, dropped, clipped = [], 0, 0
    for anno in record["annotations"]:
        assert 0 <= anno["category_id"] < num_classes
        if anno.get("iscrowd", 0):
            kept.append(anno)
            continue
        x0, y0, a, b = anno["bbox"]
        xywh = anno["bbox_mode"] == BoxMode.XYWH_ABS
        x1, y1 = (x0 + a, y0 + b) if xywh else (a, b)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        if record.get("width") is not None and record.get("height") is not None:
            c = (max(x0, 0.0), max(y0, 0.0), min(x1, record["width"]), min(y1, record["height"]))
            if c[2] <= c[0] or c[3] <= c[1]:
                dropped += 1
                continue
            if c != (x0, y0, x1, y1):
                clipped += 1
                anno = dict(anno, bbox=[c[0], c[1], c[2] - c[0], c[3] - c[1]] if xywh else list(c))
        kept.append(anno)
    return kept, dropped, clipped


def test_dataset_checks_agree_with_a_per_box_reference():
    rng = np.random.default_rng(0)
    special = [math.nan, math.inf, -math.inf, 0.0, -5.0]
    dicts = []
    for i in range(300):
        sized = i % 10 != 0  # some records without width/height: no clipping there
        record = {"file_name": __file__, "image_id": i, "annotations": []}
        if sized:
            record.update(width=int(rng.integers(50, 200)), height=int(rng.integers(50, 200)))
        for _ in range(int(rng.integers(0, 6))):
            box = [float(v) for v in rng.uniform(-60, 250, 4)]
            if rng.random() < 0.15:
                box[int(rng.integers(4))] = special[int(rng.integers(len(special)))]
            mode = BoxMode.XYWH_ABS if rng.random() < 0.5 else BoxMode.XYXY_ABS
            record["annotations"].append(
                {"bbox": box, "bbox_mode": mode, "category_id": int(rng.integers(3)),
                 "iscrowd": int(rng.random() < 0.05)}
            )  # fmt: skip
        dicts.append(record)
    before = copy.deepcopy(dicts)
    out, report = sanitize_dataset_dicts(dicts, num_classes=3)
    assert repr(dicts) == repr(before)  # the input is not modified
    expected = [_reference_check(r, 3) for r in before]

    def floats(annos):  # the reference keeps ints where the image size was an int
        return repr([dict(a, bbox=[float(v) for v in a["bbox"]]) for a in annos])

    assert [floats(r["annotations"]) for r in out] == [floats(e[0]) for e in expected]
    assert report.dropped_boxes == sum(e[1] for e in expected) > 20
    assert report.clipped_boxes == sum(e[2] for e in expected) > 20
    non_crowd = [[a for a in e[0] if not a.get("iscrowd", 0)] for e in expected]
    assert report.boxes == sum(len(k) for k in non_crowd)
    assert report.images_without_boxes == sum(not k for k in non_crowd)
    assert report.crowd_boxes == sum(a["iscrowd"] for r in before for a in r["annotations"])
    # Records that did not change are the same objects.
    assert all((o is r) == (o["annotations"] == r["annotations"]) for o, r in zip(out, dicts))


def test_dataset_checks_name_a_box_that_is_not_four_numbers():
    record = {"file_name": __file__, "image_id": 3, "width": 10, "height": 10,
              "annotations": [{"bbox": [1, 2, 3], "bbox_mode": BoxMode.XYWH_ABS,
                               "category_id": 0}]}  # fmt: skip
    with pytest.raises(InputError, match=r"image id 3\): annotation 0 has no valid 'bbox'"):
        sanitize_dataset_dicts([record], num_classes=1)


# --------------------------------------------------------------------- COCO evaluation
def test_coco_evaluator_fast_backend_gives_pycocotools_results(tmp_path):
    """The COCOeval that Trainer.build_evaluator uses (compat) against pycocotools."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.structures import Boxes, Instances

    from fcos_d2 import compat
    from fcos_d2.evaluation import PRCurveCOCOEvaluator

    rng = np.random.default_rng(0)
    images, annos, outputs = [], [], []
    for i in range(40):
        images.append({"id": i + 1, "width": 320, "height": 240, "file_name": f"{i}.jpg"})
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, (n, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(110), (n, 2)))
        cats = rng.integers(1, 6, n)
        for k in range(n):
            annos.append({"id": len(annos) + 1, "image_id": i + 1, "category_id": int(cats[k]),
                          "bbox": [*xy[k], *wh[k]], "area": float(wh[k].prod()),
                          "iscrowd": int(rng.random() < 0.05)})  # fmt: skip
        # Detections: jittered objects (some with another class) and random boxes.
        near = np.concatenate([xy, xy + wh], 1) + rng.normal(0, 4, (n, 4))
        far = rng.uniform(0, 200, (30, 2)).repeat(2, 1) + [0, 0, 40, 30]
        boxes = np.concatenate([near, far])
        classes = np.concatenate([np.where(rng.random(n) < 0.1, 0, cats - 1),
                                  rng.integers(0, 5, 30)])  # fmt: skip
        inst = Instances((240, 320), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                         scores=torch.tensor(np.concatenate([rng.uniform(0.4, 1, n),
                                                             rng.uniform(0, 0.6, 30)])),
                         pred_classes=torch.tensor(classes))  # fmt: skip
        outputs.append(({"image_id": i + 1}, {"instances": inst}))
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 6)]
    with open(tmp_path / "gt.json", "w") as f:
        json.dump({"images": images, "annotations": annos, "categories": cats}, f)
    name = "fcos_d2_test_fast_cocoeval"
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path))
    try:
        DatasetCatalog.get(name)  # sets the class names and id mapping of the metadata
        assert compat.fast_cocoeval_class(), "no fast COCOeval: tools/setup_env.sh installs one"
        results = {}
        for fast in (False, True):
            evaluator = PRCurveCOCOEvaluator(name, output_dir=None, use_fast_impl=fast)
            assert evaluator._use_fast_impl is fast
            evaluator.reset()
            for inp, out in outputs:
                evaluator.process([inp], [out])
            results[fast] = evaluator.evaluate()["bbox"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results[False].keys() == results[True].keys() and len(results[False]) == 6 + 5
    assert 5 < results[False]["AP"] < 95  # neither trivial nor perfect
    for key, value in results[False].items():
        assert abs(results[True][key] - value) < 1e-4 * 100, key  # AP in percent
