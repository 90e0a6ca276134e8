#!/usr/bin/env bash
# Every GPU-side throughput check of the detect path in one command, for a session lent a GPU (one call).
# Writes its JSON and tables to $OUT (or ./gpu_session_out), named after the machine.
#
#   bash benchmarks/gpu_session.sh                                   # on the GPU machine
#   DEVICE=cpu IMAGES=16 BATCH=8 BACKBONE=resnet10t CROP=64 COMPILE=default bash benchmarks/gpu_session.sh  # CPU smoke
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_session_out}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-4096}
BATCH=${BATCH:-128}
BACKBONE=${BACKBONE:-vit_large_patch14_dinov2}
CROP=${CROP:-336}
PY=${PYTHON:-python}
mkdir -p "$OUT"
machine=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')")
tag=$(echo "$machine" | tr -c 'A-Za-z0-9\n' '_' | tr 'A-Z' 'a-z')
bundle=$(mktemp -d)/random-pixel
# 1. the paper's pixel expert (random weights): files to verdicts, stage by stage
$PY benchmarks/random_pixel_bundle.py --backbone "$BACKBONE" --crop "$CROP" --batch-size "$BATCH" --out "$bundle"
$PY benchmarks/throughput.py --bundle "$bundle" --device "$DEVICE" --images "$IMAGES" --batch-size "$BATCH" \
  --machine "$machine" --out "$OUT/throughput_${tag}_pixel" | tail -n 3
# 1b. the same, torch.compile'd (CUDA graphs: the crop batch has one shape)
$PY benchmarks/throughput.py --bundle "$bundle" --device "$DEVICE" --images "$IMAGES" --batch-size "$BATCH" \
  --compile "${COMPILE:-reduce-overhead}" --machine "$machine" --out "$OUT/throughput_${tag}_pixel_compiled" | tail -n 3
# 2. the starter bundle on the same machine
$PY benchmarks/throughput.py --device "$DEVICE" --images "$((IMAGES / 4))" --batch-size "$((BATCH / 2))" \
  --machine "$machine" --out "$OUT/throughput_${tag}_starter" | tail -n 3
# 3. the model alone (eager and compiled), the ceiling the pipeline is measured against
if [ "$DEVICE" = cuda ]; then
  $PY benchmarks/gpu_pixel.py --compile --out "$OUT/gpu_pixel_${tag}.json"
fi
ls -l "$OUT"
