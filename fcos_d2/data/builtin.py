"""Built-in synthetic detection dataset ``fcos_synth``: generated on first use, no download.

Images show simple shapes (one shape per class) of random colour on textured backgrounds, in
COCO json + PNG format. Generation is deterministic: image ``i`` of a split with seed ``s`` is
drawn from ``np.random.default_rng([s, i])``, so the same arguments give byte-identical files.

Layout (``<cache>`` is :func:`default_cache_dir`)::

    <cache>/datasets/fcos_synth_v2/<split>_n<num_images>_s<seed>/<split>.json
    <cache>/datasets/fcos_synth_v2/<split>_n<num_images>_s<seed>/<split>/000000.png ...

The json file is written last, by an atomic rename: if it exists, the split is complete.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

try:  # POSIX only; without it concurrent first uses are not serialised.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SYNTH_CLASSES",
    "SynthObject",
    "default_cache_dir",
    "ensure_builtin_dataset",
    "generate_synthetic_coco",
    "register_builtin_datasets",
    "render_synthetic_image",
    "synth_dataset_stats",
]

logger = logging.getLogger(__name__)

#: Class names; category id ``k + 1`` in the json is ``SYNTH_CLASSES[k]``.
SYNTH_CLASSES: tuple[str, ...] = ("disk", "rectangle", "triangle", "ring", "cross")

#: Version of the generator; part of the cache path, bump it when the output changes.
SYNTH_VERSION = "fcos_synth_v2"

# Smallest allowed short side (px) and largest aspect ratio per class.
_MIN_SIDE = {"disk": 8, "rectangle": 8, "triangle": 9, "ring": 10, "cross": 9}
_MAX_ASPECT = {"disk": 3.0, "rectangle": 3.0, "triangle": 3.0, "ring": 2.5, "cross": 2.5}
_MIN_LONG_SIDE = 10  # lower end of the log-uniform long side
_MAX_SIDE_FRAC = 0.9  # upper end, relative to the image side
_MAX_OBJECTS = 14
_EMPTY_PROB = 0.05
_MAX_OCCLUDED = 0.6  # an earlier object may lose at most this fraction of its pixels
_PLACE_ATTEMPTS = 20
_MIN_CONTRAST = 90.0  # 10th percentile of RGB distance to the pixels under/around the object
_NOISE_PROB = 0.5
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


@dataclass(frozen=True)
class _BuiltinSplit:
    split: str
    num_images: int
    seed: int
    env_var: str


_BUILTIN_SPLITS: dict[str, _BuiltinSplit] = {
    "fcos_synth_train": _BuiltinSplit("train", 2000, 0, "FCOS_D2_SYNTH_TRAIN_IMAGES"),
    "fcos_synth_val": _BuiltinSplit("val", 200, 1, "FCOS_D2_SYNTH_VAL_IMAGES"),
}


@dataclass(frozen=True)
class _Location:
    name: str
    split: str
    num_images: int
    seed: int
    out_dir: str

    @property
    def json_file(self) -> str:
        return os.path.join(self.out_dir, f"{self.split}.json")

    @property
    def image_root(self) -> str:
        return os.path.join(self.out_dir, self.split)


# Locations frozen at registration time (env vars are read once, when registering).
_REGISTERED: dict[str, _Location] = {}


@dataclass(frozen=True)
class SynthObject:
    """One drawn object: 1-based ``category_id``, tight ``bbox`` (x, y, w, h) in pixels and the
    shape's boolean ``mask`` of shape (h, w) inside that box (before later objects cover it)."""

    category_id: int
    bbox: tuple[int, int, int, int]
    mask: np.ndarray


def _announce(msg: str) -> None:
    """Log ``msg``; print it too when no logging handler would show it."""
    logger.info(msg)
    if not logger.isEnabledFor(logging.INFO) or not logger.hasHandlers():
        print(msg, flush=True)


# ----------------------------------------------------------------------------- drawing


def _shape_mask(shape: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` stretched to fill a w x h box."""
    if shape == "rectangle":
        return np.ones((h, w), dtype=bool)
    if shape in ("disk", "ring"):
        xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / (w / 2)
        ys = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / (h / 2)
        r2 = xs[None, :] ** 2 + ys[:, None] ** 2
        if shape == "disk":
            return r2 <= 1.0
        inner = rng.uniform(0.45, 0.65)
        return (r2 <= 1.0) & (r2 >= inner * inner)
    if shape == "triangle":
        t = rng.uniform(0.15, 0.85)
        a, b = round(t * (w - 1)), round(t * (h - 1))
        pts = [
            [(0, h - 1), (w - 1, h - 1), (a, 0)],  # apex up
            [(0, 0), (w - 1, 0), (a, h - 1)],  # apex down
            [(w - 1, 0), (w - 1, h - 1), (0, b)],  # apex left
            [(0, 0), (0, h - 1), (w - 1, b)],  # apex right
        ][int(rng.integers(4))]
        canvas = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(canvas, [np.array(pts, dtype=np.int32).reshape(-1, 1, 2)], 1)
        return canvas.astype(bool)
    if shape == "cross":
        frac = rng.uniform(0.28, 0.4)
        tx, ty = max(2, round(frac * w)), max(2, round(frac * h))
        cols = np.zeros(w, dtype=bool)
        rows = np.zeros(h, dtype=bool)
        cols[(w - tx) // 2 : (w - tx) // 2 + tx] = True
        rows[(h - ty) // 2 : (h - ty) // 2 + ty] = True
        return cols[None, :] | rows[:, None]
    raise ValueError(f"unknown shape {shape!r}")


def _crop_tight(mask: np.ndarray) -> np.ndarray:
    """Crop a mask to the tight box of its True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _sample_box_size(
    shape: str, img_w: int, img_h: int, rng: np.random.Generator
) -> tuple[int, int]:
    """(w, h) of an object: log-uniform long side, log-uniform aspect ratio, random orientation."""
    horizontal = bool(rng.integers(2))
    long_dim, short_dim = (img_w, img_h) if horizontal else (img_h, img_w)
    hi = _MAX_SIDE_FRAC * long_dim
    long_side = math.exp(rng.uniform(math.log(_MIN_LONG_SIDE), math.log(hi)))
    aspect = math.exp(rng.uniform(0.0, math.log(_MAX_ASPECT[shape])))
    short_side = max(_MIN_SIDE[shape], long_side / aspect)
    short_side = min(short_side, _MAX_SIDE_FRAC * short_dim)
    long_i = max(_MIN_SIDE[shape], int(round(long_side)))
    short_i = max(_MIN_SIDE[shape], int(round(short_side)))
    return (long_i, short_i) if horizontal else (short_i, long_i)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 (h, w, 3) textured background: gradient, smooth colour noise, stripes, blobs."""
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    theta = rng.uniform(0.0, 2 * math.pi)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    bg = c0 + (c1 - c0) * t[..., None]

    gh, gw = (int(v) for v in rng.integers(2, 7, size=2))
    coarse = rng.normal(0.0, rng.uniform(5.0, 30.0), size=(gh, gw, 3)).astype(np.float32)
    bg += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)

    if rng.random() < 0.5:  # stripes
        period = rng.uniform(6.0, 60.0)
        ang = rng.uniform(0.0, math.pi)
        amp = (rng.uniform(5.0, 25.0) * rng.uniform(0.3, 1.0, size=3)).astype(np.float32)
        phase = (xs * math.cos(ang) + ys * math.sin(ang)) * (2 * math.pi / period)
        bg += np.sin(phase + rng.uniform(0.0, 2 * math.pi))[..., None] * amp

    for _ in range(int(rng.integers(0, 5))):  # soft blobs (separable gaussians)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sigma = rng.uniform(10.0, 60.0)
        amp = rng.uniform(-40.0, 40.0, size=3).astype(np.float32)
        gx = np.exp(-((xs - cx) ** 2) / (2 * sigma**2))
        gy = np.exp(-((ys - cy) ** 2) / (2 * sigma**2))
        bg += (gy * gx)[..., None] * amp
    return bg


def _pick_colour(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour far (in RGB) from most pixels of ``region`` (float32, (..., 3))."""
    px = region.reshape(-1, 3)
    px = px[:: len(px) // 2048 + 1]
    cands = rng.uniform(0.0, 255.0, size=(12, 3)).astype(np.float32)
    dist = np.linalg.norm(px[None, :, :] - cands[:, None, :], axis=2)
    score = np.percentile(dist, 10, axis=1)
    good = np.flatnonzero(score >= _MIN_CONTRAST)
    return cands[good[0] if len(good) else int(np.argmax(score))]


def render_synthetic_image(
    seed: int, index: int, min_size: int = 256, max_size: int = 384
) -> tuple[np.ndarray, list[SynthObject]]:
    """Render image ``index`` of a split with ``seed``: (uint8 BGR image, objects in draw order).

    This is exactly what :func:`generate_synthetic_coco` writes for that image.
    """
    rng = np.random.default_rng([seed, index])
    img_h, img_w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    canvas = _background(img_h, img_w, rng)
    num = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(1, _MAX_OBJECTS + 1))

    objects: list[SynthObject] = []
    visible: list[np.ndarray] = []  # full-image masks of the still visible pixels
    for _ in range(num):
        cls = int(rng.integers(len(SYNTH_CLASSES)))
        shape = SYNTH_CLASSES[cls]
        for _attempt in range(_PLACE_ATTEMPTS):
            bw, bh = _sample_box_size(shape, img_w, img_h, rng)
            mask = _crop_tight(_shape_mask(shape, bw, bh, rng))
            bh, bw = mask.shape
            x0 = int(rng.integers(0, img_w - bw + 1))
            y0 = int(rng.integers(0, img_h - bh + 1))
            if not _occlusion_ok(objects, visible, mask, x0, y0):
                continue
            # Draw: colour contrasting with what lies under and around the box.
            m = 2
            around = canvas[max(0, y0 - m) : y0 + bh + m, max(0, x0 - m) : x0 + bw + m]
            colour = _pick_colour(around, rng)
            gx, gy = rng.uniform(-20.0, 20.0, size=2)
            sx = np.arange(bw, dtype=np.float32)[None, :] / max(bw - 1, 1) - 0.5
            sy = np.arange(bh, dtype=np.float32)[:, None] / max(bh - 1, 1) - 0.5
            shade = gx * sx + gy * sy
            region = canvas[y0 : y0 + bh, x0 : x0 + bw]
            region[mask] = (colour + shade[..., None])[mask]
            for vis in visible:
                vis[y0 : y0 + bh, x0 : x0 + bw] &= ~mask
            full = np.zeros((img_h, img_w), dtype=bool)
            full[y0 : y0 + bh, x0 : x0 + bw] = mask
            visible.append(full)
            objects.append(SynthObject(cls + 1, (x0, y0, bw, bh), mask))
            break

    if rng.random() < _NOISE_PROB:  # sensor-like noise (costs PNG size, so not everywhere)
        noise = rng.standard_normal(size=canvas.shape, dtype=np.float32)
        canvas += noise * np.float32(rng.uniform(1.0, 3.0))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _occlusion_ok(
    objects: list[SynthObject], visible: list[np.ndarray], mask: np.ndarray, x0: int, y0: int
) -> bool:
    """False if drawing ``mask`` at (x0, y0) would hide too much of an earlier object."""
    bh, bw = mask.shape
    for obj, vis in zip(objects, visible):
        ox, oy, ow, oh = obj.bbox
        ix0, iy0 = max(x0, ox), max(y0, oy)
        ix1, iy1 = min(x0 + bw, ox + ow), min(y0 + bh, oy + oh)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        covered = np.count_nonzero(
            vis[iy0:iy1, ix0:ix1] & mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        )
        remaining = np.count_nonzero(vis[oy : oy + oh, ox : ox + ow]) - covered
        if remaining < (1.0 - _MAX_OCCLUDED) * np.count_nonzero(obj.mask):
            return False
    return True


# -------------------------------------------------------------------------- generation


def generate_synthetic_coco(
    out_dir: str,
    split: str,
    num_images: int,
    seed: int,
    min_size: int = 256,
    max_size: int = 384,
    *,
    name: str | None = None,
) -> str:
    """Write ``out_dir/<split>/*.png`` and ``out_dir/<split>.json`` (COCO) and return the json
    path. Overwrites an existing split. Files appear atomically: everything is generated in a
    temporary sibling folder, then the image folder and finally the json are renamed into place.
    ``name`` (default: ``split``) is only used in the progress messages.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    out_dir = os.path.abspath(out_dir)
    json_path = os.path.join(out_dir, f"{split}.json")
    image_dir = os.path.join(out_dir, split)
    _announce(
        f"[fcos_d2] generating built-in dataset '{name or split}' ({num_images} images, "
        f"seed {seed}) in {out_dir} ..."
    )
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=out_dir)
    try:
        tmp_images = os.path.join(tmp, split)
        os.makedirs(tmp_images)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for i in range(num_images):
            img, objects = render_synthetic_image(seed, i, min_size, max_size)
            file_name = f"{i:06d}.png"
            if not cv2.imwrite(os.path.join(tmp_images, file_name), img, _PNG_PARAMS):
                raise OSError(f"could not write {os.path.join(tmp_images, file_name)}")
            images.append(
                {"id": i + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
            )
            for obj in objects:
                x, y, w, h = obj.bbox
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": obj.category_id,
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "area": float(w * h),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {
                "description": "fcos_d2 built-in synthetic shapes",
                "version": SYNTH_VERSION,
                "split": split,
                "seed": seed,
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": name, "supercategory": "shape"}
                for k, name in enumerate(SYNTH_CLASSES)
            ],
        }
        tmp_json = os.path.join(tmp, f"{split}.json")
        with open(tmp_json, "w", encoding="utf-8") as f:
            json.dump(coco, f)
        # Swap into place; the json goes last so that its presence means "complete".
        if os.path.lexists(json_path):
            os.remove(json_path)
        if os.path.isdir(image_dir):
            shutil.rmtree(image_dir)
        os.rename(tmp_images, image_dir)
        os.replace(tmp_json, json_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _announce(
        f"[fcos_d2] wrote {num_images} images with {len(annotations)} objects to {json_path} "
        f"({time.perf_counter() - start:.1f}s)"
    )
    return json_path


# ------------------------------------------------------------------------ registration


def default_cache_dir() -> str:
    """``$FCOS_D2_CACHE`` if set, else ``~/.cache/fcos_d2``."""
    path = os.environ.get("FCOS_D2_CACHE") or os.path.join("~", ".cache", "fcos_d2")
    return os.path.abspath(os.path.expanduser(path))


def _resolve(name: str, root: str | None) -> _Location:
    if name not in _BUILTIN_SPLITS:
        raise KeyError(f"unknown built-in dataset {name!r}; known: {sorted(_BUILTIN_SPLITS)}")
    spec = _BUILTIN_SPLITS[name]
    num = spec.num_images
    raw = os.environ.get(spec.env_var, "").strip()
    if raw:
        try:
            num = int(raw)
        except ValueError:
            raise ValueError(f"${spec.env_var} must be an integer, got {raw!r}") from None
        if num < 1:
            raise ValueError(f"${spec.env_var} must be >= 1, got {num}")
    base = (
        os.path.abspath(os.path.expanduser(root))
        if root
        else os.path.join(default_cache_dir(), "datasets")
    )
    out_dir = os.path.join(base, SYNTH_VERSION, f"{spec.split}_n{num}_s{spec.seed}")
    return _Location(name, spec.split, num, spec.seed, out_dir)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (no-op where fcntl is unavailable)."""
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(loc: _Location) -> bool:
    return os.path.isfile(loc.json_file) and os.path.isdir(loc.image_root)


def _ensure(loc: _Location) -> str:
    if _is_complete(loc):
        return loc.json_file
    os.makedirs(loc.out_dir, exist_ok=True)
    with _file_lock(os.path.join(loc.out_dir, ".lock")):
        if not _is_complete(loc):  # another process may have finished meanwhile
            for stale in glob.glob(os.path.join(loc.out_dir, f".{loc.split}.tmp-*")):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
            generate_synthetic_coco(loc.out_dir, loc.split, loc.num_images, loc.seed, name=loc.name)
    return loc.json_file


def ensure_builtin_dataset(name: str, root: str | None = None) -> str:
    """Generate built-in dataset ``name`` if needed and return its json path.

    Without ``root``, a registered dataset uses the location chosen at registration.
    """
    loc = _REGISTERED[name] if root is None and name in _REGISTERED else _resolve(name, root)
    return _ensure(loc)


def _load(loc: _Location) -> list[dict]:
    return load_coco_json(_ensure(loc), loc.image_root, loc.name)


def register_builtin_datasets(root: str | None = None) -> None:
    """Register ``fcos_synth_train`` and ``fcos_synth_val`` (lazily generated on first
    ``DatasetCatalog.get``). Names already registered are left alone.

    ``root`` defaults to ``<default_cache_dir()>/datasets``; image counts can be overridden
    with ``$FCOS_D2_SYNTH_TRAIN_IMAGES`` / ``$FCOS_D2_SYNTH_VAL_IMAGES`` (read now).
    """
    for name in _BUILTIN_SPLITS:
        if name in DatasetCatalog.list():
            continue
        loc = _resolve(name, root)
        DatasetCatalog.register(name, functools.partial(_load, loc))
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)  # stale metadata of an earlier registration
        MetadataCatalog.get(name).set(
            json_file=loc.json_file,
            image_root=loc.image_root,
            evaluator_type="coco",
            thing_classes=list(SYNTH_CLASSES),
        )
        _REGISTERED[name] = loc


# ------------------------------------------------------------------------------- stats


def synth_dataset_stats(json_path: str) -> dict[str, Any]:
    """Summary of a COCO json: image/annotation counts, empty images, per-class counts, box
    side range (px and relative to the image side) and aspect (w/h) range."""
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = {n: 0 for n in names.values()}
    per_image = {im["id"]: 0 for im in data["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for ann in data["annotations"]:
        per_class[names[ann["category_id"]]] += 1
        per_image[ann["image_id"]] += 1
    stats: dict[str, Any] = {
        "num_images": len(data["images"]),
        "num_annotations": len(data["annotations"]),
        "images_without_objects": sum(1 for v in per_image.values() if v == 0),
        "max_objects_per_image": max(per_image.values(), default=0),
        "per_class": per_class,
        "min_box_side": None,
        "max_box_side": None,
        "max_box_side_frac": None,
        "min_aspect": None,
        "max_aspect": None,
    }
    if data["annotations"]:
        boxes = np.array([a["bbox"] for a in data["annotations"]], dtype=np.float64)
        img_wh = np.array([sizes[a["image_id"]] for a in data["annotations"]], dtype=np.float64)
        aspect = boxes[:, 2] / boxes[:, 3]
        stats.update(
            min_box_side=float(boxes[:, 2:].min()),
            max_box_side=float(boxes[:, 2:].max()),
            max_box_side_frac=float((boxes[:, 2:] / img_wh).max()),
            min_aspect=float(aspect.min()),
            max_aspect=float(aspect.max()),
        )
    return stats
