#!/usr/bin/env bash
# The paper grid on Fashion-MNIST (configs/paper-fashion.yaml: 18 models of the paper CNN,
# 20 epochs) in one command on a GPU machine, then its report in reports/paper-fashion/.
#
#   scripts/gpu-paper-fashion.sh [DATA_DIR]
#
# DATA_DIR holds the four Fashion-MNIST IDX files (.gz or plain); default: Debian's
# /usr/share/datasets/fashion-mnist, else ./shared/fashion-mnist (files taken along to a machine
# without network). Every job uses the GPU (device: auto); up to JOBS jobs share it (default 6:
# the small CNN leaves most of an H100/H200 idle with one job). Prints the wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-}
if [ -z "$DATA_DIR" ]; then
    for candidate in /usr/share/datasets/fashion-mnist shared/fashion-mnist; do
        if [ -d "$candidate" ]; then DATA_DIR=$candidate; break; fi
    done
fi
if [ -z "$DATA_DIR" ] || [ ! -d "$DATA_DIR" ]; then
    echo "no Fashion-MNIST directory: pass one, or apt-get install dataset-fashion-mnist" >&2
    exit 2
fi
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
JOBS=${JOBS:-6}
override=$(mktemp --suffix=.yaml)
trap 'rm -f "$override"' EXIT
printf 'data:\n  sources:\n    fashion_mnist: %s\n' "$(realpath "$DATA_DIR")" > "$override"
start=$(date +%s)
"$PY" -m snakemake --cores "$JOBS" \
    --configfile configs/paper-fashion.yaml "$override" --rerun-incomplete
end=$(date +%s)
echo "paper-fashion: $((end - start)) s wall on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
