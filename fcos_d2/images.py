"""
The input contract of fcos-d2's predictors, in one place: :func:`to_bgr_uint8` turns what
OpenCV may read into the (H, W, 3) uint8 BGR image that Detectron2's ``DefaultPredictor``
takes. ``fcos_d2.predictor.Predictor`` (torch) and ``fcos_d2.deploy.ExportedPredictor``
(numpy and a runtime) both call it, so they accept and refuse the same images.

This module needs numpy only (fcos_d2.deploy imports it on machines without torch).
"""

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["to_bgr_uint8"]


def _describe(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return f"{image.dtype} array of shape {image.shape}"
    return type(image).__name__


def to_bgr_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """
    Turn what OpenCV may read (``cv2.IMREAD_UNCHANGED``) into an (H, W, 3) uint8 BGR image:

    - (H, W, 3) uint8: returned as is (made contiguous);
    - grayscale (H, W) or (H, W, 1): the channel is replicated;
    - BGRA (H, W, 4): the alpha channel is dropped;
    - uint16 pixels (any of the above): scaled to 8 bits, round((v * 255) / 65535).

    Anything else raises :class:`~fcos_d2.errors.InputError` (a ValueError) naming ``name``
    and what was given: not a numpy array (None, a list: its type), another number of
    dimensions or channels, an empty image (a side of 0: its shape), other pixel types
    (float, int16, bool: its dtype).
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {_describe(image)}")
    given = image.shape
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got {given}")
    if min(image.shape[:2]) == 0:
        raise InputError(f"{name}: empty image of shape {given}")
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
    elif image.dtype != np.uint8:
        raise InputError(f"{name}: expected uint8 or uint16 pixels, got {image.dtype}")
    image = image.astype(np.uint8, copy=False)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
