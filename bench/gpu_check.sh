#!/usr/bin/env bash
# The GPU path, proven in one call (issue 22): the demo job on CUDA, KD at 224 px with augmentation (loader and
# step images/s, peak memory), a short data-free job and a one-process distributed job; one Markdown table.
#
#   bench/gpu_check.sh             # on the device machine: about 5 minutes of an H100/H200
#   bench/gpu_check.sh --dry-run   # here, on CPU at toy sizes: checks the script's own plumbing
#
# The device machine has its own Python 3.12 and torch, and no package registry: the packages it lacks travel
# as cp312 wheels in an ignored folder (gpu-wheels/, carried) and are installed from it, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
if [ -d gpu-wheels ] && ! "$PYTHON" -c "import grpc_health, webdataset" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links gpu-wheels gpu-wheels/*.whl
fi
exec "$PYTHON" bench/gpu_check.py "$@"
