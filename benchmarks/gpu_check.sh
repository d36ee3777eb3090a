#!/usr/bin/env bash
# GPU check, run from the repository root on a fresh CUDA machine (an H100) where a virtual
# environment with the project installed sits at .venv and $OUT is a folder for the results:
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# 1. the benchmark suite on the GPU      -> $OUT/bench_gpu.json, $OUT/bench_gpu.log
# 2. the quick profile of the workflow   -> $OUT/quick_gpu_time.txt (wall seconds),
#    on the GPU, timed end to end           $OUT/quick_gpu.log, $OUT/metrics.json
#
# Each step goes on when an earlier one fails; the script's status is the benchmark's.
set -x
set -o pipefail

OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
PY=.venv/bin/python

nvidia-smi || true
"$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' || true

"$PY" -m benchmarks --device cuda --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
bench_status=$?

started=$(date +%s.%N)
.venv/bin/snakemake --cores 16 --configfile configs/quick.yaml --config run_name=quick_gpu \
    > "$OUT/quick_gpu.log" 2>&1
quick_status=$?
ended=$(date +%s.%N)
awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f\n", b - a }' > "$OUT/quick_gpu_time.txt"
echo "snakemake exit status $quick_status" >> "$OUT/quick_gpu_time.txt"
tail -n 30 "$OUT/quick_gpu.log" || true
cp reports/quick_gpu/metrics.json "$OUT/metrics.json" || true
cat "$OUT/quick_gpu_time.txt"

exit "$bench_status"
