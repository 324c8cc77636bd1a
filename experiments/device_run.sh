#!/usr/bin/env bash
# Issue 24's one prepared run on a lent GPU machine (an H200; ≤ 9 minutes of the 15 the session has):
#   1. synthesis, on the idle GPU: bench_synthesis.py's small case (0.4 s → 0.3 s target), profile_synthesis.py (where
#      the time goes: spans, torch.profiler table + trace, cProfile), the whole `duald-synthesize --device cuda`
#      command for one volume and for a cohort of 10 in one command;
#   2. the training step, on the idle GPU: bench_training.py's floor, unet and dual_attention, and dual_attention
#      with issue 24's D1 levers (--gp-every, --gp-batch, --d1-precision, --d1-layout), one row each;
#   3. the paper's ablation at equal steps: the five variants + the per-pixel D2 × the five LOSO folds × three seeds
#      (90 jobs), ABLATION_STEPS each, no time cap, in one pool under CUDA MPS (`loso.py confirm --ablation-only`);
#      then its table (experiments/ablation_table.py: mean ± std over seeds, detail measures included).
# Every file goes under $OUT. A stage that fails or is cut by its time limit is named in $OUT/FAILED and the script
# exits 1 (after writing everything it has).
#
#   run (the device tool sets OUT; carry [".loso", ".whl"]):  bash experiments/device_run.sh .loso/loso.npz
#   CPU dry run, everything shrunk (tiny steps, one fold, one seed, a 20-slice phantom), ~10 min on 2 cores:
#     SMOKE=1 OUT=/tmp/dev-out bash experiments/device_run.sh /path/to/loso.npz
#
# The step count (ABLATION_STEPS=250), from the step rates measured in stage F (experiments/results/
# loso-h100-stage-F.json: 46 jobs in one pool under MPS on an H100, the same recipe, batch 16 of 160×160 crops):
#   per-job rates in that pool: unet 7.8 steps/s, local 4.4, global 2.2, dual 1.95, dual_attention 1.66,
#   per-pixel D2 1.74 → step costs relative to unet: 1, 1.8, 3.5, 4.0, 4.7, 4.5 (sum 19.5 unet-steps);
#   the pool's throughput: 21 unet jobs × 8 + 5 local × 4.4 × 1.8 + 20 D1 jobs × 1.9 × 4.1 ≈ 360 unet-steps/s;
#   one step of the whole ablation = 15 (folds × seeds) × 19.5 = 292 unet-steps → 0.81 s per ablation step;
#   time for it: 540 s − set-up 15 − synthesis ≈ 90 − training benchmarks ≈ 70 − table/packing 10 ≈ 355 s, less
#   two waves of start-up + evaluation (48 processes at once fit the H200's 141 GB at ≤ 2.4 GB each; 90 do not)
#   ≈ 2 × 45 s → ≈ 265 s of training → 265 / 0.81 ≈ 325 steps on an H100 (the H200 is no slower); 250 leaves
#   ~25 % for the estimate's error (the pool starts the costliest variants first: loso.py's STEP_COST). If it still
#   runs out, $OUT/FAILED says so and the table counts the jobs.
set -uo pipefail
START=$(date +%s)
PREPARED=${1:-.loso/loso.npz}
OUT=${OUT:?set OUT to the folder the results go to (the device tool sets it)}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then  # the CPU dry run: the same stages, shrunk
  DEVICE=${DEVICE:-cpu}; DEADLINE=${DEADLINE:-1500}; SEEDS=${SEEDS:-0}; MAX_FOLDS=${MAX_FOLDS:-1}
  ABLATION_STEPS=${ABLATION_STEPS:-2}; PARALLEL=${PARALLEL:-2}; BATCH=${BATCH:-2}
  LIMIT_SCALE=${LIMIT_SCALE:-8}  # the stages' time limits, stretched for a shared 2-core CPU
  SLICES=(--slices 20); REPEAT=1; WARMUP=0
  TRAIN=(--steps 1 --warmup 0 --chunk 1 --batch 2 --height 64 --width 64 --subjects 1 --slices 4)
else
  DEVICE=${DEVICE:-cuda}; DEADLINE=${DEADLINE:-540}; SEEDS=${SEEDS:-0,1,2}; MAX_FOLDS=${MAX_FOLDS:-0}
  ABLATION_STEPS=${ABLATION_STEPS:-250}; PARALLEL=${PARALLEL:-48}; BATCH=${BATCH:-16}; LIMIT_SCALE=1
  SLICES=(); REPEAT=5; WARMUP=2
  TRAIN=(--steps 40 --warmup 10 --chunk 10)  # 50 steps per row: ≤ 5 s each at dual_attention's ~80 ms
fi
RECIPE=${RECIPE:-rank+aug+2.5d}
WORK=$OUT/work  # the pool's job records and logs (no bundles are written); removed at the end, their tails kept
mkdir -p "$OUT" "$WORK" || exit 1
export PYTHONUNBUFFERED=1
log="$OUT/run.log"
: >"$OUT/FAILED"
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$log"; }
# step NAME SECONDS CMD...: runs CMD under a time limit, its output in $OUT/NAME.log; a failure is recorded, not fatal
step() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  say "$name exit $rc"
  [ "$rc" = 0 ] || echo "$name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)') — see $name.log" >>"$OUT/FAILED"
  return 0
}

if [ -f .whl/sitk.tar.xz ] && ! python3 -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/site && tar -xJf .whl/sitk.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for w in .whl/*.whl; do  # pure-Python wheels the engine imports (pydicom, for the DICOM writer)
  [ -f "$w" ] && mkdir -p /tmp/site && python3 -m zipfile -e "$w" /tmp/site && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
done
export PYTHONPATH=$PWD/DualDSynthesis:$PWD/DualDTraining${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "nproc $(nproc)"; } >>"$log" 2>&1
python3 -c "import torch, SimpleITK as s; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', 'SimpleITK', s.Version_VersionString())" \
  >>"$log" 2>&1 || { echo "set-up: torch or SimpleITK missing (see run.log)" | tee -a "$OUT/FAILED"; exit 1; }
if [ "$DEVICE" = cuda ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "set-up: DEVICE=cuda but torch sees no GPU" | tee -a "$OUT/FAILED"; exit 1
fi
[ -f "$PREPARED" ] || echo "prepared arrays $PREPARED missing: no ablation" >>"$OUT/FAILED"
say "set-up done: device $DEVICE, seeds $SEEDS, ablation $ABLATION_STEPS steps, deadline $DEADLINE s"

# 1. Synthesis on the idle GPU (timings mean nothing beside the training pool).
step bench_synthesis 60 python3 benchmarks/bench_synthesis.py --device "$DEVICE" --case small --repeat "$REPEAT" \
  "${SLICES[@]}"
step profile_synthesis 60 python3 benchmarks/profile_synthesis.py --device "$DEVICE" --out "$OUT/profile" \
  --warmup "$WARMUP" --repeat "$REPEAT" "${SLICES[@]}"
step command_one 45 python3 benchmarks/bench_synthesis.py --device "$DEVICE" --case startup --repeat 2 "${SLICES[@]}"
step command_cohort 90 python3 benchmarks/bench_synthesis.py --device "$DEVICE" --case cohort "${SLICES[@]}"

# 2. The training step: unet, dual_attention (the paper's penalty on every D1 update) and issue 24's levers. On CUDA
#    "auto" already runs D1 in bf16 autocast and channels_last, so the fp32 / contiguous rows say what those buy.
step bench_training 100 python3 benchmarks/bench_training.py --device "$DEVICE" --variants unet,dual_attention \
  --also "gp_every=4;gp_every=16;gp_batch=4;gp_every=4,gp_batch=4;gp_every=16,gp_batch=4;d1_precision=fp32;d1_layout=contiguous" \
  "${TRAIN[@]}"

# 3. The ablation at equal steps, in one pool; MPS kept only if a few clients run under it at once.
mps=off
export PATH=$PATH:/usr/local/nvidia/bin  # where the driver's tools sit on the lent machines
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d >>"$log" 2>&1; then
    ok=1
    for i in 1 2 3 4; do
      timeout 60 python3 -c "import torch; x=torch.randn(512,512,device='cuda'); print(float((x@x).sum()))" \
        >/dev/null 2>>"$log" &
    done
    for j in $(jobs -p); do wait "$j" || ok=0; done
    if [ "$ok" = 1 ]; then mps=on; else echo quit | nvidia-cuda-mps-control; sleep 2; fi
  fi
  [ "$mps" = on ] || unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
left=$(( (DEADLINE - $(elapsed) - 15) / LIMIT_SCALE ))  # step stretches it back
say "MPS $mps; ablation: $RECIPE, seeds $SEEDS, $ABLATION_STEPS steps per job, $(( left * LIMIT_SCALE )) s left for it"
( while sleep 45; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >>"$log" 2>&1 \
  || break; done ) &
monitor=$!
if [ -f "$PREPARED" ]; then
  step ablation "$left" python3 experiments/loso.py confirm --ablation-only --prepared "$PREPARED" --out "$WORK" \
    --device "$DEVICE" --recipes "$RECIPE" --seeds "$SEEDS" --ablation-steps "$ABLATION_STEPS" \
    --parallel "$PARALLEL" --batch "$BATCH" --max-folds "$MAX_FOLDS"
fi
kill "$monitor" 2>/dev/null
[ "$mps" = on ] && echo quit | nvidia-cuda-mps-control

# 4. The results (from the job records when the pool was stopped) and the table.
python3 - "$WORK" "$OUT/results.json" >>"$log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
if (work / "results.json").is_file():
    out.write_text((work / "results.json").read_text())
else:
    records = [json.loads(p.read_text()) for p in sorted((work / "jobs").glob("*.json"))]
    out.write_text(json.dumps(records, indent=1))
print("results:", len(json.loads(out.read_text())), "jobs")
EOF
expected=$(( 6 * $(echo "$SEEDS" | tr ',' '\n' | grep -c .) * (MAX_FOLDS > 0 ? MAX_FOLDS : 5) ))
done_jobs=$(python3 -c "import json,sys; print(sum(1 for r in json.load(open(sys.argv[1])) if not r.get('failed')))" \
  "$OUT/results.json" 2>>"$log" || echo 0)
[ "$done_jobs" = "$expected" ] || echo "ablation: $done_jobs of $expected jobs finished" >>"$OUT/FAILED"
python3 experiments/ablation_table.py "$OUT/results.json" >"$OUT/ablation_table.md" 2>>"$log" \
  || echo "ablation table: failed (see run.log)" >>"$OUT/FAILED"
mkdir -p "$OUT/job-logs"
for f in "$WORK"/jobs/*.log; do [ -f "$f" ] && tail -c 2000 "$f" >"$OUT/job-logs/$(basename "$f")"; done
rm -rf "$WORK"  # job specs and logs: the tails above are what matters
ls -la "$OUT" >>"$log"
if [ -s "$OUT/FAILED" ]; then say "FAILED:"; cat "$OUT/FAILED" | tee -a "$log"; exit 1; fi
rm -f "$OUT/FAILED"
say "done"
