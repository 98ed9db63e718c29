"""fcos_d2/data/checks.py: the vectorised dataset checks against a per-box reference written
from their contract, and the errors that name the record and annotation."""

import copy
import math

import numpy as np
import pytest
from detectron2.structures import BoxMode

from fcos_d2.data.checks import sanitize_dataset_dicts
from fcos_d2.errors import InputError


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
                {
                    "bbox": box,
                    "bbox_mode": mode,
                    "category_id": int(rng.integers(3)),
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
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
    record = {
        "file_name": __file__,
        "image_id": 3,
        "width": 10,
        "height": 10,
        "annotations": [{"bbox": [1, 2, 3], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}],
    }
    with pytest.raises(InputError, match=r"image id 3\): annotation 0 has no valid 'bbox'"):
        sanitize_dataset_dicts([record], num_classes=1)
