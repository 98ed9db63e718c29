"""fcos_d2/images.py: the one input conversion of Predictor and ExportedPredictor (what is
accepted, what each refusal names), and that it needs numpy only."""

import subprocess
import sys

import numpy as np
import pytest

from fcos_d2.errors import InputError
from fcos_d2.images import to_bgr_uint8
from helpers import ROOT


def test_accepted_images_become_bgr_uint8():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert to_bgr_uint8(bgr) is bgr  # already contiguous BGR uint8: not copied
    gray = bgr[:, :, 0]
    for g in (gray, gray[:, :, None]):
        out = to_bgr_uint8(g)
        assert out.shape == (5, 7, 3) and out.dtype == np.uint8
        assert (out == gray[:, :, None]).all()
    bgra = np.dstack([bgr, np.zeros((5, 7), np.uint8)])
    assert np.array_equal(to_bgr_uint8(bgra), bgr)
    # 16 bits: v * 255 / 65535 rounded; 257 * v for every 8-bit v is exact.
    assert np.array_equal(to_bgr_uint8(bgr.astype(np.uint16) * 257), bgr)
    deep = np.array([[0, 128, 129, 65535]], dtype=np.uint16)
    assert to_bgr_uint8(deep)[0, :, 0].tolist() == [0, 0, 1, 255]
    view = bgr[::2, ::-3]  # strided, negative steps
    out = to_bgr_uint8(view)
    assert out.flags.c_contiguous and np.array_equal(out, view)


@pytest.mark.parametrize(
    "image,named",
    [
        (None, "got NoneType"),
        ([[0, 1], [2, 3]], "got list"),
        (np.zeros((0, 0), np.uint8), r"empty image of shape \(0, 0\)"),
        (np.zeros((0, 9, 3), np.uint8), r"empty image of shape \(0, 9, 3\)"),
        (np.zeros((4, 0, 4), np.uint8), r"empty image of shape \(4, 0, 4\)"),
        (np.zeros((4, 4, 2), np.uint8), r"HxWx4 image, got \(4, 4, 2\)"),
        (np.zeros((1, 4, 4, 3), np.uint8), r"got \(1, 4, 4, 3\)"),
        (np.zeros(5, np.uint8), r"got \(5,\)"),
        (np.zeros((4, 4, 3), np.float32), "uint8 or uint16 pixels, got float32"),
        (np.zeros((4, 4, 3), np.int16), "got int16"),
        (np.zeros((4, 4), bool), "got bool"),
    ],
)
def test_refusals_name_what_was_given(image, named):
    with pytest.raises(InputError, match=named) as e:
        to_bgr_uint8(image, name="frame 3")
    assert isinstance(e.value, ValueError) and str(e.value).startswith("frame 3: ")


def test_needs_numpy_only():
    code = (
        "import sys\n"
        "for m in ('torch', 'detectron2', 'cv2', 'PIL'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from fcos_d2.images import to_bgr_uint8\n"
        "assert to_bgr_uint8(np.zeros((2, 3), np.uint16)).shape == (2, 3, 3)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
