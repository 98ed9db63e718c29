#!/usr/bin/env bash
# One command for a CUDA machine (tools/gpu_check.py): set up .venv with tools/setup_env.sh,
# then train 50 fp16-AMP iterations of configs/FCOS_R50_1x.yaml on the built-in data, compare
# --eval-only AP on the GPU and the CPU, time inference against torchvision's FCOS in fp32 and
# fp16, and check the ONNX export in ONNX Runtime's CUDA provider against eager inference.
# Prints a summary table, writes <output>/summary.json, exits non-zero when a check failed.
#
#   bash tools/gpu_check.sh [--no-setup] [gpu_check.py options: --output DIR, --device cuda:1,
#                            --dry-run (tiny sizes on the CPU), --steps ..., --help]
#
# --no-setup (or FCOS_D2_NO_SETUP=1) skips tools/setup_env.sh and uses the venv as it is;
# FCOS_D2_VENV names another venv (as for setup_env.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FCOS_D2_VENV:-$ROOT/.venv}"
SETUP=1
[[ "${FCOS_D2_NO_SETUP:-0}" != "0" ]] && SETUP=0
ARGS=()
for arg in "$@"; do
  if [[ "$arg" == "--no-setup" ]]; then
    SETUP=0
  else
    ARGS+=("$arg")
  fi
done

if [[ "$SETUP" == 1 ]]; then
  bash "$ROOT/tools/setup_env.sh"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "gpu_check.sh: no Python at $VENV/bin/python: run without --no-setup" >&2
  exit 2
fi
exec "$VENV/bin/python" "$ROOT/tools/gpu_check.py" ${ARGS[@]+"${ARGS[@]}"}
