"""fcos_d2/export.py's parity measure: detections whose scores differ by float rounding
may come out in either order; a moved box is still found."""

import numpy as np

from fcos_d2.export import PARITY_SCORE_TOL, _matched_differences


def _dets():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 80, 90], [5, 5, 20, 20]], np.float32)
    scores = np.array([0.9, 0.5, 0.5 - 1e-7], np.float32)
    classes = np.array([0, 1, 1])
    return boxes, scores, classes


def test_near_tied_detections_in_either_order_agree():
    b, s, c = _dets()
    swapped = (b[[0, 2, 1]], s[[0, 2, 1]], c[[0, 2, 1]])
    box_diff, score_diff = _matched_differences(swapped, (b, s, c))
    assert box_diff == 0.0 and score_diff < PARITY_SCORE_TOL
    # Compared position by position, the swap would look like a 70 px difference.
    assert np.abs(swapped[0] - b).max() == 70.0


def test_a_moved_box_or_changed_score_is_reported():
    b, s, c = _dets()
    moved = b.copy()
    moved[1, 2] += 3.0
    assert _matched_differences((moved, s, c), (b, s, c))[0] == 3.0
    changed = s.copy()
    changed[0] -= 0.01
    assert abs(_matched_differences((b, changed, c), (b, s, c))[1] - 0.01) < 1e-6
