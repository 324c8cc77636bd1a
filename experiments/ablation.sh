#!/usr/bin/env bash
# Reproduces docs/ablation.md: the paper's five variants on ../shared/data/brain-mri (T1 -> T2), same
# budget, data split and hyper-parameters; then the MRI->CT template demo model; then duald-evaluate.
#   bash experiments/ablation.sh [OUT_DIR] [ITERATIONS] [CT_ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/duald-ablation}
ITER=${2:-1000}
CT_ITER=${3:-400}
DATA=../shared/data/brain-mri
TEST=BraTS-GLI-00001-000   # the subject with the BraTS tumour labels is held out for testing
PY=.venv/bin
mkdir -p "$OUT"
common=(--data "$DATA" --source t1 --target t2 --iterations "$ITER" --batch-size 6 --crop-size 128
        --lr-g 5e-4 --seed 0 --val-subjects "$TEST" --val-every $((ITER / 2)) --checkpoint-every 100 --workers 1)
for v in unet global local dual dual_attention; do
  [ -f "$OUT/$v/model-final.safetensors" ] && continue
  start=$(date +%s)
  "$PY/duald-train" "${common[@]}" --variant "$v" --output "$OUT/$v" --overwrite > "$OUT/$v.log" 2>&1
  echo "$v: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
done
# MRI -> CT demo: one template pair, so no held-out subject (a demo of the CT path only).
if [ ! -f "$OUT/ct/model-final.safetensors" ]; then
  "$PY/python" experiments/prepare_ct_template_pair.py --ct-template ../shared/data/ct-template --output "$OUT/ct-pair"
  start=$(date +%s)
  "$PY/duald-train" --data "$OUT/ct-pair" --source t1 --target ct --variant dual_attention --iterations "$CT_ITER" \
    --batch-size 6 --crop-size 128 --lr-g 5e-4 --seed 0 --val-every 0 --workers 1 \
    --output "$OUT/ct" --overwrite > "$OUT/ct.log" 2>&1
  echo "ct: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
fi
for v in unet global local dual dual_attention; do
  "$PY/duald-evaluate" --model "$OUT/$v/model-final.safetensors" --data "$DATA" --source t1 --target t2 \
    --subjects "$TEST" --device cpu --json "$OUT/eval-$v.json" --overwrite > "$OUT/eval-$v.txt" 2>&1
done
"$PY/duald-evaluate" --model "$OUT/ct/model-final.safetensors" --data "$OUT/ct-pair" --source t1 --target ct \
  --device cpu --json "$OUT/eval-ct.json" --overwrite > "$OUT/eval-ct.txt" 2>&1
echo done > "$OUT/DONE"
