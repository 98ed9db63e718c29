#!/usr/bin/env python
"""
Run a trained FCOS model on images, folders of images or videos and write visualisations.

    python tools/demo.py --config-file configs/quickstart.yaml \
        --input photo.jpg images/ clip.mp4 --output demo_out/ \
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

Detections are drawn from a score of --confidence-threshold, or with per-class thresholds
from --class-thresholds FILE (written by tools/class_thresholds.py).

Large images with small objects: --slice H W runs the model on overlapping H x W tiles
(plus the whole image) through SAHI and merges the detections (fcos_d2/slicing.py):

    python tools/demo.py --config-file configs/quickstart.yaml --input big.jpg \
        --output demo_out/ --slice 352 352 --overlap 0.2 \
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth
"""

import argparse
import glob
import os
import sys
from typing import List

import cv2
import numpy as np
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import Visualizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcos_d2.config import get_fcos_cfg  # noqa: E402
from fcos_d2.errors import InputError  # noqa: E402
from fcos_d2.predictor import BatchPredictor, to_bgr_uint8  # noqa: E402
from fcos_d2.slicing import sahi_detection_model, sliced_predict  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="images, folders or videos")
    p.add_argument("--output", required=True, help="folder for the visualisations")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="one score threshold for all classes",
    )
    p.add_argument(
        "--class-thresholds",
        metavar="JSON",
        help="per-class score thresholds (tools/class_thresholds.py); "
        "replaces --confidence-threshold",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--slice",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sliced inference through SAHI: tiles of H x W pixels (e.g. the test size)",
    )
    p.add_argument(
        "--overlap", type=float, default=0.2, help="with --slice: overlap of neighbouring tiles"
    )
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def expand_inputs(paths: List[str]) -> List[str]:
    """Files from the given paths (folders contribute their images, sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS)
            )
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InputError(f"input not found: {path}")
    return files


def draw(image_bgr: np.ndarray, instances, metadata, threshold: float = 0.0) -> np.ndarray:
    """Detections scored >= ``threshold`` drawn on the image; returns BGR."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= threshold]
    vis = Visualizer(image_bgr[:, :, ::-1], metadata)
    return vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image {path}")
    return to_bgr_uint8(image, name=path)


def run_video(predictor, path: str, out_path: str, metadata) -> int:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise InputError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames = None, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            out = draw(frame, predictor([frame])[0]["instances"], metadata)
            if writer is None:
                h, w = out.shape[:2]
                writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(out)
            frames += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise InputError(f"no frames could be read from video {path}")
    return frames


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = get_fcos_cfg(args.config_file, args.opts)
    import torch

    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    # The predictor applies the thresholds (per class from the file, else the global one).
    thresholds = args.class_thresholds or args.confidence_threshold
    if args.slice:
        if args.class_thresholds:
            raise InputError("--class-thresholds is not supported with --slice")
        if min(args.slice) < 1 or not 0 <= args.overlap < 1:
            raise InputError(f"--slice needs sides >= 1 and 0 <= --overlap < 1, got {args}")
        sahi_model = sahi_detection_model(cfg, confidence_threshold=args.confidence_threshold)

        def predictor(images):
            return [
                {"instances": sliced_predict(sahi_model, im, args.slice, args.overlap)}
                for im in images
            ]
    else:
        predictor = BatchPredictor(cfg, batch_size=args.batch_size, thresholds=thresholds)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(args.output, exist_ok=True)
    files = expand_inputs(args.input)
    videos = [f for f in files if f.lower().endswith(VIDEO_EXTS)]
    images = [f for f in files if f not in videos]
    for start in tqdm.tqdm(range(0, len(images), args.batch_size), desc="images"):
        paths = images[start : start + args.batch_size]
        arrays = [read_image(p) for p in paths]
        for path, image, out in zip(paths, arrays, predictor(arrays)):
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            vis = draw(image, out["instances"], metadata)
            cv2.imwrite(os.path.join(args.output, name), vis)
    for path in videos:
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
        frames = run_video(predictor, path, out_path, metadata)
        print(f"{path}: {frames} frames -> {out_path}")
    print(f"Wrote {len(images)} image(s) and {len(videos)} video(s) to {args.output}")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        sys.exit(2)
