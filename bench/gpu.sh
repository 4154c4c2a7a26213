#!/usr/bin/env bash
# Every check that needs a GPU, in one go (about 8 minutes at most on one H100), written to
# $OUT/gpu-DEVICE.md (the device tool's output folder; bench/results/ where $OUT is unset):
#   1. the tests marked `cuda` (a stream in bf16 and fp32 on CUDA, against the CPU)
#   2. bench/costs.py on the T-sized Grounding DINO at 800 px, bf16 then fp32: SDPT, Adapter, VPT, LoRA against
#      full fine-tuning (training step time and its ratio to full FT, peak memory, latency)
#   3. bench/loading.py: loading at 800 x 1333 and T-sized SDPT training steps on CUDA with 0 and 4 data workers
#   4. a 2-task stream end to end on CUDA (`continual run`), then the same under torchrun, one process on nccl
# Before: bench/gpu-prepare.sh here, then run it there with .gpu carried. Without CUDA it refuses (exit 2).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "bench/gpu.sh: no CUDA device here ($PY: torch.cuda.is_available() is not True); run it on a GPU machine" >&2
  exit 2
fi
if [ -d .gpu/wheels ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-site .gpu/wheels/*.whl || exit 2
fi
export PYTHONPATH="$PWD:/tmp/gpu-site:$PWD/.gpu/minilm${PYTHONPATH:+:$PYTHONPATH}"
export CONTINUAL_CACHE=/tmp/continual-cache CI=1 PYTHONUNBUFFERED=1
name=$($PY -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')
report="${OUT:-bench/results}/gpu-$name.md"
mkdir -p "$(dirname "$report")"
T_SIZE="host=builtin:t-size device=cuda --overwrite"

section() {  # title, seconds, command...: its output in a code block, cut off at its time limit
  local title=$1 limit=$2
  shift 2
  printf '\n## %s\n\n`%s`\n\n```\n' "$title" "$*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -e '^WARNING: Location' -e 'UserWarning' | tail -40
  printf '```\n(%d s, exit %s)\n' $((SECONDS - start)) "${PIPESTATUS[0]}"
}

{
  echo "# bench/gpu.sh on $name"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $($PY -c \
    'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
  section "CUDA tests" 120 $PY -m pytest -q -m cuda tests -p no:cacheprovider
  section "Costs, bf16" 90 $PY bench/costs.py --host t-size --image-size 800 --device cuda --precision bf16 \
    --only sdpt,adapter,vpt,lora --reps 3
  section "Costs, fp32" 90 $PY bench/costs.py --host t-size --image-size 800 --device cuda --precision fp32 \
    --only sdpt,adapter,vpt,lora --reps 3
  section "Loading and training steps with data workers" 75 $PY bench/loading.py --images 64 --workers 0 4 \
    --train-steps 5 --device cuda --precision bf16
  section "A 2-task stream on CUDA" 45 $PY -m continual run configs/smoke.yaml run_dir=/tmp/gpu-stream $T_SIZE
  section "The same under torchrun, one process (nccl)" 60 $PY -m torch.distributed.run --nproc_per_node 1 \
    -m continual run configs/smoke.yaml run_dir=/tmp/gpu-torchrun $T_SIZE
} | tee "$report"
echo "report: $report"
