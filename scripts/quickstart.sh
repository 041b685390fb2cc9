#!/usr/bin/env bash
# `make quickstart`: the main job on the embedded synthetic dataset.
# Training arrives with the training issue; until then this generates a few synthetic
# images and runs the inference CLI on them with RANDOM weights, to show the whole path
# (config -> model -> predict -> detections.json + drawn images) working on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=work_dirs/quickstart
DATA=$OUT/synthetic
if [ ! -f "$DATA/annotations/instances_val.json" ]; then
  rm -rf "$DATA"
  $PYTHON -m iadet.data.synthetic --out "$DATA" --num-train 0 --num-val 8 --seed 0
fi
echo "NOTE: no training yet (see README, 'Status'): the detector below has random weights."
$PYTHON -m iadet.infer --config configs/quickstart.yaml --input "$DATA/val" --out "$OUT/infer" \
  --score-thr 0.05
echo "Detections: $OUT/infer/detections.json; drawn images: $OUT/infer/*.jpg"
