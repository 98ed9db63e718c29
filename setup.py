#!/usr/bin/env python
"""fcos-d2: FCOS (Tian et al., ICCV 2019) as a Detectron2 extension."""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The one version source: fcos_d2/__init__.py (read, not imported: it needs torch).
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (Path(__file__).parent / "fcos_d2" / "__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="fcos-d2",
    version=VERSION,
    description="FCOS: Fully Convolutional One-Stage object detection for Detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["fcos_d2", "fcos_d2.*"]),
    python_requires=">=3.10",
    # Detectron2 is not on PyPI; tools/setup_env.sh installs it (see docs/install.md).
    install_requires=["torch", "torchvision", "fvcore", "pycocotools", "opencv-python-headless"],
    # Export and the runtime class: pip install -e .[deploy] (fcos_d2/deploy.py itself needs
    # only numpy, Pillow and onnxruntime or openvino; nncf quantizes to INT8). Sliced
    # inference needs SAHI, best installed as tools/setup_env.sh does (--no-deps: its
    # opencv-python clashes with opencv-python-headless).
    extras_require={
        "deploy": ["onnx", "onnxscript", "onnxruntime", "openvino", "nncf", "Pillow"],
        "slicing": ["sahi", "shapely"],
    },
)
