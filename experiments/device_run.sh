#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/generalisation.md and docs/performance.md):
# the LOSO stages (recipes, ablation, final model) from the carried prepared arrays, then the
# training-step benchmark. Everything the run prints goes to $OUT/run.log; results.json, the final
# bundle and the chosen variant's five fold bundles (float16) come back beside it (8 files at most).
#   run: bash experiments/device_run.sh .loso/loso.npz   (with $OUT set by the device tool)
set -u
PREPARED=${1:-.loso/loso.npz}
OUT=${OUT:-/tmp/duald-out}
WORK=/tmp/duald-loso
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 DUALD_SITK_STUB=1
log="$OUT/run.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} >"$log" 2>&1
timeout "${LOSO_TIMEOUT:-420}" python3 experiments/loso.py run --prepared "$PREPARED" --out "$WORK" --device cuda \
  --parallel 30 --seconds-a "${SECONDS_A:-60}" --seconds-b "${SECONDS_B:-90}" --seconds-c "${SECONDS_C:-100}" \
  >>"$log" 2>&1
echo "loso exit $?" >>"$log"
cp "$WORK/results.json" "$OUT/" 2>>"$log"
cp "$WORK/t1_to_t2.safetensors" "$OUT/" 2>>"$log"
chosen=$(python3 -c "import json; r=json.load(open('$WORK/results.json')); print([x for x in r if x.get('stage')=='summary'][-1]['chosen_variant'])" 2>>"$log")
mkdir -p "$OUT/folds"
for f in "$WORK"/bundles/B-"$(echo "$chosen" | tr '+.' '__')"-*.safetensors; do cp "$f" "$OUT/folds/" 2>>"$log"; done
python3 experiments/loso.py table "$WORK/results.json" >>"$log" 2>&1
if [ -f benchmarks/bench_training.py ]; then
  timeout "${BENCH_TIMEOUT:-120}" python3 experiments/sitk_stub.py benchmarks/bench_training.py --device cuda \
    >>"$log" 2>&1
  echo "bench exit $?" >>"$log"
fi
ls -la "$OUT" "$OUT/folds" >>"$log"
