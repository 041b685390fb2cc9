#!/usr/bin/env bash
# `make quickstart`: the main job on the embedded synthetic dataset, on a CPU.
# 1. generates the synthetic dataset (first run only, into data/synthetic),
# 2. trains the IoU-aware RetinaNet of configs/quickstart.yaml (run folder work_dirs/quickstart),
# 3. evaluates it (COCO AP table; work_dirs/quickstart/metrics.json),
# 4. re-scores the same detections for several α of Eq. 7, with the predicted IoU and with
#    IoU_truth (the paper's Tables 3 and 6 in small; work_dirs/quickstart/eval/alpha_sweep.md)
#    and draws the paper's Fig. 4 (work_dirs/quickstart/plots),
# 5. draws its detections on a few validation images, upscaled to 512 px, the ground truth
#    beside the predictions (work_dirs/quickstart/infer).
# Running it again resumes (or, when finished, just re-evaluates) the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=work_dirs/quickstart
start=$(date +%s)
$PYTHON -m iadet.train --config configs/quickstart.yaml --work-dir "$OUT" --resume auto "$@"
$PYTHON -m iadet.eval --config configs/quickstart.yaml --checkpoint "$OUT/latest.pth" --out "$OUT/eval" \
  --alphas none,1.0,0.7,0.5,0.3 --iou-source both --plots "$OUT/plots" --batch-size 8
DATA_ROOT=$($PYTHON -c "import iadet; from iadet.builder import synthetic_dataset_root; print(synthetic_dataset_root(iadet.load_config('configs/quickstart.yaml')))")
VAL_DIR="$DATA_ROOT/val"
mkdir -p "$OUT/infer_input"
ls "$VAL_DIR" | head -n 8 | while read -r f; do cp "$VAL_DIR/$f" "$OUT/infer_input/"; done
$PYTHON -m iadet.infer --config configs/quickstart.yaml --checkpoint "$OUT/latest.pth" \
  --input "$OUT/infer_input" --out "$OUT/infer" --score-thr 0.5 \
  --ann "$DATA_ROOT/annotations/instances_val.json" --format png
echo "quickstart finished in $(( $(date +%s) - start )) s: metrics in $OUT/metrics.json, α sweep in $OUT/eval/alpha_sweep.md, plots in $OUT/plots/, drawn detections in $OUT/infer/"
