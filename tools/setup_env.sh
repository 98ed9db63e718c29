#!/usr/bin/env bash
# Create (or verify) the project's virtual environment in .venv/ and install
# everything fcos-d2 needs: torch + torchvision, Detectron2, fvcore,
# pycocotools, faster-coco-eval, OpenCV, lvis, pytest, ruff, the deployment runtimes
# (ONNX, ONNX Runtime, OpenVINO, NNCF for INT8), SAHI (sliced inference) and fcos_d2
# itself (editable).
#
# Detectron2 is not on PyPI. By default it is built from the `pb1-detectron2`
# sdist (upstream v0.6 sources) without its C++ extension (docs/install.md, "Installing
# Detectron2"). To use your own Detectron2 instead, set
#   FCOS_D2_DETECTRON2=<pip spec | wheel | path to a source checkout>
# before running this script (it is installed with --no-build-isolation, so a
# from-source build sees the venv's torch).
#
# Idempotent: when the venv already matches this script and the requested
# Detectron2, it checks the imports and exits in a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FCOS_D2_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1)
# Pins: Pillow<10 (D2 0.6 uses PIL.Image.LINEAR), setuptools<80 (pkg_resources,
# and --no-build-isolation for from-source Detectron2 builds). faster-coco-eval: the
# COCOeval that COCOEvaluator uses where Detectron2 has no C++ one (8x pycocotools at
# COCO size, same metrics: docs/benchmarks.md).
EXTRA_SPEC=("Pillow<10" "setuptools<80" "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10"
            pycocotools "faster-coco-eval>=1.8,<2" opencv-python-headless "pytest>=8"
            "ruff==0.17.6")
# Deployment (fcos_d2/export.py, fcos_d2/deploy.py; setup.py's "deploy" extra), pinned to the
# versions the export tests ran with.
DEPLOY_SPEC=("onnx==1.23.2" "onnxscript==0.7.2" "onnxruntime==1.32.0" "openvino==2026.4.1"
             "nncf==3.4.0")
# Sliced inference (fcos_d2/slicing.py) through SAHI, installed without its dependencies
# (its opencv-python would clash with opencv-python-headless, which provides the same cv2)
# and with those it imports.
SAHI_SPEC=("sahi==0.12.8")
SAHI_DEPS=("shapely>=2,<3" "fire" "click" "requests")
D2_SOURCE="${FCOS_D2_DETECTRON2:-pb1-detectron2==0.6}"

# Python 3.10 or newer (setup.py's python_requires; the code uses its syntax).
if ! "$PY_BOOT" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "tools/setup_env.sh: fcos-d2 needs Python >= 3.10; $PY_BOOT is $("$PY_BOOT" -V 2>&1)." \
       "Set PYTHON=/path/to/python3.10+ and run again." >&2
  exit 1
fi

# The stamp records what the venv was built from; a change re-runs the install.
stamp_key() {
  { cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.py"; echo "$D2_SOURCE"; } | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.fcos_d2_setup"
KEY="$(stamp_key)"

check_imports() {
  "$VENV/bin/python" - <<'EOF'
import fcos_d2, detectron2, torch, torchvision, fvcore, pycocotools, faster_coco_eval, cv2  # noqa: F401
import lvis, onnx, onnxscript, onnxruntime, openvino, nncf, sahi.predict  # noqa: F401
from detectron2.engine import DefaultTrainer  # noqa: F401
EOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]] && check_imports 2>/dev/null; then
  echo "[setup] .venv is up to date ($("$VENV/bin/python" -c 'import detectron2,torch;print("detectron2", detectron2.__version__, "torch", torch.__version__)'))"
  exit 0
fi

echo "[setup] creating/updating $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY_BOOT" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "[setup] torch + torchvision (${TORCH_SPEC[*]})"
"${PIP[@]}" install -q "${TORCH_SPEC[@]}"
"${PIP[@]}" install -q "${EXTRA_SPEC[@]}" "${DEPLOY_SPEC[@]}" wheel

install_pypi_detectron2() {
  # Build upstream v0.6 sources from the pb1-detectron2 sdist without the
  # (absent) C++ extension, and add an empty detectron2/_C so that its
  # module-level `from detectron2 import _C` imports succeed.
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "$D2_SOURCE"
  tar -xzf "$work"/*.tar.gz -C "$work"
  local src
  src="$(find "$work" -maxdepth 1 -mindepth 1 -type d | head -n1)"
  "$VENV/bin/python" - "$src/setup.py" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
new, n = re.subn(r"ext_modules\s*=\s*get_extensions\(\)", "ext_modules=[]", text)
if n != 1:
    sys.exit(f"[setup] could not find ext_modules=get_extensions() in {path}")
open(path, "w").write(new)
EOF
  # collect_env (run by default_setup) asks _C for its compilers.
  [[ -e "$src/detectron2/_C.py" ]] || cat > "$src/detectron2/_C.py" <<'PYEOF'
"""Placeholder: Detectron2 built without its C++ extension (see fcos-d2 tools/setup_env.sh)."""


def get_compiler_version():
    return "none (built without the C++ extension)"


def get_cuda_version():
    return "none (built without the C++ extension)"


def has_cuda():
    return False
PYEOF
  "${PIP[@]}" install -q --no-build-isolation "$src"
}

if [[ -n "${FCOS_D2_DETECTRON2:-}" ]]; then
  echo "[setup] detectron2 from FCOS_D2_DETECTRON2=$FCOS_D2_DETECTRON2"
  "${PIP[@]}" install -q --no-build-isolation "$FCOS_D2_DETECTRON2"
else
  echo "[setup] detectron2 0.6 from PyPI (pb1-detectron2 sdist, Python-only build)"
  install_pypi_detectron2
fi
# Detectron2's own requirements may have moved the pins above; restore them.
"${PIP[@]}" install -q "${EXTRA_SPEC[@]}" "${DEPLOY_SPEC[@]}"
# lvis (Detectron2's LVISEvaluator) without its dependencies: they are Detectron2's, except
# opencv-python, which would clash with opencv-python-headless; Cython is build-time only.
"${PIP[@]}" install -q --no-deps "lvis==0.5.3"
"${PIP[@]}" install -q "${SAHI_DEPS[@]}"
"${PIP[@]}" install -q --no-deps "${SAHI_SPEC[@]}"

echo "[setup] fcos_d2 (editable)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"

check_imports
echo "$KEY" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import detectron2,torch;print("detectron2", detectron2.__version__, "torch", torch.__version__)')"
