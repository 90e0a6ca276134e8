#!/usr/bin/env bash
# How the embedded `starter` bundle was made, step by step (2-core CPU dev box unless noted).
# Each step is resumable or skips finished work; re-running the whole script reproduces the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${ALIGNGEMINI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/aligngemini}/data
VAE=${VAE:-$D/generators/vae-realorai-h100-1k}   # trained on one H100 by benchmarks/gpu_generators.py

# 1. the registry-sourced corpus + ../shared/datasets/realorai, split train/val by source (and by topic)
aligngemini data fetch-starter
# 2. our reconstruction generator: a small SD-family VAE. The one used was trained on a GPU (61 s):
#      python benchmarks/gpu_generators.py --photos DIR --out OUT --steps 1000 --batch 64
#    the same trainer runs here on the CPU, e.g.:
[ -d "$VAE" ] || aligngemini generators train-vae --images "$D/starter/manifest.jsonl" --split train --out "$VAE"
# 3. the two orthogonal sets
aligngemini data build-pixel --generator "vae:$VAE" --out "$D/pixel-starter" --device cpu --set crop_size=256
aligngemini data build-semantic --out "$D/semantic-starter" --size-range 256 384 --balance none
# 4. one trainer, two recipes
aligngemini train recipes/pixel-starter.yaml --output runs/pixel-starter
aligngemini train recipes/semantic-starter.yaml --output runs/semantic-starter
# 5. one bundle, thresholds calibrated on the two validation splits
aligngemini assemble --pixel runs/pixel-starter --semantic runs/semantic-starter --name starter \
  --out runs/starter-uncalibrated --overwrite
aligngemini calibrate "$D/pixel-starter/manifest.jsonl" "$D/semantic-starter/manifest.jsonl" --split val \
  --bundle runs/starter-uncalibrated --target balanced --out aligngemini/bundles/starter --overwrite
