#!/usr/bin/env bash
# Train an SD-family decoder of our own on a lent GPU in one call, and bring its weights back.
#
# A decoder of our own makes pure-pixel pairs of a second decoder family only if its reconstructions keep the
# photos' fine detail, as real decoders do (benchmarks/decoder_detail.py: TAEF2 keeps all of it, the CPU-trained
# ones a tenth to a third). This trains one on TAEF2's frozen latents at the 256 px the pairs use, distilled from
# TAEF2's own decoder, with the ring-energy and PatchGAN terms, for MINUTES minutes.
#
# Prepare on the dev box (ignored paths, carried to the GPU; about 40 MiB in all):
#   python benchmarks/pack_decoder_crops.py --images data:starter/manifest.jsonl --out .carry/crops
#   mkdir -p .carry/taef2 && cp ../shared/weights/taef2/* .carry/taef2/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1       # the GPU machine has no diffusers
# Run there (device tool): command "bash benchmarks/gpu_decoder.sh", carry [".carry", ".whl"].
# Then here, on photos it never saw:
#   python benchmarks/decoder_detail.py --images data:starter/manifest.jsonl --generator taesd:../shared/weights/taef2 \
#       --generator taesd-kl:DIR --crop 256 --crops 44 --out benchmarks/results/decoder_detail_256_gpu
# (DIR: the returned $OUT/decoder. A smoke test here: DEVICE=cpu MINUTES=1 SIZE=64 BATCH=4 bash benchmarks/gpu_decoder.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_decoder_out}
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-256}
BATCH=${BATCH:-16}
ADV=${ADV:-0.5}  # the critic's weight: the SD VAE's 0.5 (on the CPU at batch 4 it cost 3-5 dB without --distill;
                 # 0.1 with it kept the PSNR; neither moved the detail there)
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT"
$PY -m aligngemini generators train-vae --images .carry/crops --out "$OUT/decoder" --encoder taesd:.carry/taef2 \
  --channels 64,128,128,128 --size "$SIZE" --batch "$BATCH" --crops-per-image 1 --lr 2e-4 --distill \
  --spectral-weight 0.1 --adversarial-weight "$ADV" --steps 100000 --max-minutes "$MINUTES" --eval-every 250 \
  --save-every 100000 --device "$DEVICE" --overwrite 2>&1 | tr '\r' '\n' | grep -v '^train-vae:' | tee "$OUT/train.log"
# what comes back (7 files): the decoder with its encoder copy, licence, card and metrics, and the log; the
# checkpoint (optimiser state, over the 16 MiB a file may have) stays behind
rm -rf "$OUT/decoder/checkpoint"
ls -l "$OUT/decoder"
