#!/usr/bin/env python
"""fcos-d2: FCOS (Tian et al., ICCV 2019) as a Detectron2 extension."""
from setuptools import find_packages, setup

setup(
    name="fcos-d2",
    version="0.1.0",
    description="FCOS: Fully Convolutional One-Stage object detection for Detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["fcos_d2", "fcos_d2.*"]),
    python_requires=">=3.8",
    # Detectron2 is not on PyPI; tools/setup_env.sh installs it (see README).
    install_requires=["torch", "torchvision", "fvcore", "pycocotools", "opencv-python-headless"],
    # Export and the runtime class: pip install -e .[deploy] (fcos_d2/deploy.py itself needs
    # only numpy and onnxruntime or openvino).
    extras_require={"deploy": ["onnx", "onnxscript", "onnxruntime", "openvino"]},
)
