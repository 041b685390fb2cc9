#!/usr/bin/env bash
# One command for a CUDA machine: every check that needs a GPU, one markdown report.
#
#   bash scripts/gpu_check.sh [REPORT.md]      # default: $OUT/gpu_check.md when $OUT is set, else gpu_check.md
#
# Steps (each under `timeout`, pass / fail / time recorded; at most 460 s of steps in all, under 8 minutes):
#   1. nms        tests/ops/test_nms_cuda.py: iadet NMS on CUDA tensors = torchvision.ops.batched_nms on CUDA
#   2. amp        tests/engine/test_amp_cuda.py: fp16 (GradScaler) and bf16 training steps on CUDA
#   3. bench      scripts/bench.py --device cuda (the GPU rows of issue 7; coco_eval and bf16_ap are CPU-side
#                 and left out)
#   4. torchrun   torchrun --nproc_per_node=1 -m iadet.train on the synthetic data (5 iterations on CUDA),
#                 then an nccl process group + all-reduce + 3 DDP steps (scripts/gpu_throughput.py --nccl-smoke;
#                 iadet.train creates no process group for a world of one)
#   5. throughput scripts/gpu_throughput.py: R50-FPN training and inference images/s at 800x1333
# Logs and JSON next to the report (REPORT_logs/). Exit code: 0 when every step passed, 1 otherwise,
# 2 at once (nothing run, nothing written) when CUDA is not available.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCHRUN=${TORCHRUN:-torchrun}

no_cuda() {
  echo "gpu_check: CUDA is not available ($1): this check needs an NVIDIA GPU; nothing was run" >&2
  exit 2
}
# the quick answers first (no torch import): GPUs hidden, or no NVIDIA driver at all
if [ "${CUDA_VISIBLE_DEVICES+set}" = set ] && { [ -z "$CUDA_VISIBLE_DEVICES" ] || [ "$CUDA_VISIBLE_DEVICES" = "-1" ]; }; then
  no_cuda "CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides every GPU"
fi
if ! ls /dev/nvidia[0-9]* >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
  no_cuda "no NVIDIA device or driver on this machine"
fi
$PYTHON -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || no_cuda "torch.cuda.is_available() is False"

if [ $# -ge 1 ]; then REPORT=$1
elif [ -n "${OUT:-}" ]; then REPORT=$OUT/gpu_check.md
else REPORT=gpu_check.md
fi
mkdir -p "$(dirname "$REPORT")"
LOGS="${REPORT%.md}_logs"
mkdir -p "$LOGS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}  # seconds for all steps: under 8 minutes with start-up and report
START=$(date +%s)
ROWS=()
FAILED=0

# run_step NAME LIMIT_S COMMAND...: runs it under timeout (never past the budget), logs, records a row
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    ROWS+=("| $name | skipped | 0 | budget of ${BUDGET_S} s spent |")
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$? t=$(( $(date +%s) - t0 )) result=pass
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result="FAIL (timeout ${limit} s)"; FAILED=1
  elif [ $rc -ne 0 ]; then result="FAIL (exit $rc)"; FAILED=1
  elif [[ "$*" == *pytest* ]] && ! grep -q " passed" "$LOGS/$name.log"; then result="FAIL (no test ran)"; FAILED=1
  fi
  local note  # the last telling line of the log, progress bars left out
  note=$(tr '\r' '\n' <"$LOGS/$name.log" | grep -v '%|' \
         | grep -E "passed|failed|skipped|[Ee]rror|OK|img/s|wrote|Killed" | tail -n 1 | tr '|' '/' | cut -c1-160)
  ROWS+=("| $name | $result | $t | ${note:-see $LOGS/$name.log} |")
  echo "gpu_check: $name: $result in $t s" >&2
}

TINY="data.synthetic.cache_dir=$WORK/data data.synthetic.num_train=16 data.synthetic.num_val=4 data.num_workers=0"
ddp_train() {  # iadet.train under torchrun, then the checkpoint must say iteration 5
  $TORCHRUN --standalone --nproc_per_node=1 -m iadet.train --config configs/quickstart.yaml \
    --work-dir "$WORK/ddp" --device cuda --no-progress \
    --opts $TINY train.batch_size=4 train.max_iters=5 train.log_interval=1 train.eval_interval=0 || return $?
  $PYTHON -c "
import sys; from iadet.checkpoint import load_checkpoint_file
it = load_checkpoint_file('$WORK/ddp/latest.pth')['iteration']
print(f'torchrun iadet.train OK: latest.pth at iteration {it}'); sys.exit(0 if it == 5 else 1)" || return $?
  $TORCHRUN --standalone --nproc_per_node=1 scripts/gpu_throughput.py --nccl-smoke
}
export -f ddp_train
export PYTHON TORCHRUN WORK TINY

run_step nms 60 $PYTHON -m pytest -q -p no:cacheprovider tests/ops/test_nms_cuda.py
run_step amp 60 $PYTHON -m pytest -q -p no:cacheprovider tests/engine/test_amp_cuda.py
run_step bench 160 $PYTHON scripts/bench.py --device cuda --json-out "$LOGS/bench_cuda.json" \
  --only r50_fp32,r50_fp32_fast,r50_bf16,r50_bf16_fast,postprocess,nms,train_step,train_step_fast,loss,iou_branch,train_memory
run_step torchrun 90 bash -c ddp_train
run_step throughput 80 $PYTHON scripts/gpu_throughput.py --device cuda --iters 15 --warmup 5 \
  --json-out "$LOGS/throughput.json" --markdown-out "$LOGS/throughput.md"

GPU=$($PYTHON -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null)
CPU=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  echo "GPU: ${GPU:-?}; CPU: ${CPU:-?} ($(nproc) cores); $($PYTHON -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}")' 2>/dev/null)"
  echo
  echo "| step | result | seconds | last line of note |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Total: $(( $(date +%s) - START )) s. Logs: \`$LOGS/\`."
  if [ -f "$LOGS/throughput.md" ]; then echo; cat "$LOGS/throughput.md"; fi
  if [ -f "$LOGS/bench.log" ]; then
    echo; echo "scripts/bench.py --device cuda:"; echo
    grep -E "^\|" "$LOGS/bench.log"
  fi
} >"$REPORT"
echo "gpu_check: report written to $REPORT" >&2
exit $FAILED
