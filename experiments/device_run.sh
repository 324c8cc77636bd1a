#!/usr/bin/env bash
# One prepared run on a lent GPU machine (15 minutes of device time per session, one shot):
#   1. issue 12's benchmarks on the idle GPU: bench_training.py and bench_synthesis.py --device cuda;
#   2. the shipped recipe under LOSO at a GPU budget, several seeds, plus its final model (all subjects),
#      and the paper's ablation with that recipe (stage B), all in one pool of processes sharing the GPU
#      (through CUDA MPS when the machine allows it: small kernels of many processes then run side by side);
#   3. results.json, the logs, and the final model + the first seed's fold bundles (split into parts) in $OUT.
# Everything keeps to a deadline (DEADLINE seconds after the start) so the outputs are written in time.
# Memory: under MPS each process held 1.4–2.4 GB of GPU memory; 46 at once (3 seeds + final + ablation) were too
# many for an H100's 80 GB (9 died at start-up with CUDA out-of-memory in session 5 and were re-run alone).
# On an H100 run SEEDS=0,1 or ABLATION_STEPS=0; the H200 (141 GB) holds all 46.
#   run: bash experiments/device_run.sh .loso/loso.npz      (with $OUT set by the device tool)
#   benchmarks only (issue 12's re-measurement, ≈ 4 min): LOSO=0 bash experiments/device_run.sh
#   CPU smoke test: DEVICE=cpu BENCH=0 DEADLINE=200 MARGIN=120 SEEDS=0 ABLATION_STEPS=1 MAX_FOLDS=1 \
#                   OUT=/tmp/dev-out bash experiments/device_run.sh .loso/loso.npz
# SimpleITK (the engine's geometry; absent on the GPU image) travels as .whl/sitk.tar.xz: the unpacked
# wheel, xz-compressed (28 MB against the wheel's 53 MB, so it fits the transfer beside the prepared data),
# and pydicom as its wheel (both built by experiments/device_wheels.sh): carry [".loso", ".whl"].
set -u
START=$(date +%s)
PREPARED=${1:-.loso/loso.npz}
OUT=${OUT:-/tmp/duald-out}
WORK=${WORK:-/tmp/duald-loso}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-560}          # seconds after the start by which everything is packed
MARGIN=${MARGIN:-100}              # LOSO start-up, evaluation and bundle writing beyond the training seconds
SEEDS=${SEEDS:-0,1,2}
ABLATION_STEPS=${ABLATION_STEPS:-1200}
MAX_FOLDS=${MAX_FOLDS:-0}
RECIPE=${RECIPE:-rank+aug+2.5d}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
log="$OUT/run.log"
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed) s] $*" >>"$log"; }

if [ -f .whl/sitk.tar.xz ] && ! python3 -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/site && tar -xJf .whl/sitk.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for w in .whl/*.whl; do  # pure-Python wheels the engine imports (pydicom, for the DICOM writer)
  [ -f "$w" ] && mkdir -p /tmp/site && python3 -m zipfile -e "$w" /tmp/site && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
done
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, SimpleITK as s; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', 'SimpleITK', s.Version_VersionString())"
  echo "nproc $(nproc)"
} >>"$log" 2>&1
say "set-up done"

# 1. Benchmarks first, while the GPU is idle (their timings mean nothing beside the training pool).
if [ "${BENCH:-1}" = 1 ]; then
  timeout 100 python3 benchmarks/bench_training.py --device "$DEVICE" >"$OUT/bench_training.log" 2>&1
  say "bench_training exit $?"
  # the lazy penalty (Eq. 3 on every 4th D1 update, scaled ×4): the lever for dual_attention ≤ 2 × unet
  timeout 100 python3 benchmarks/bench_training.py --device "$DEVICE" --gp-every 4 >"$OUT/bench_training_gp4.log" 2>&1
  say "bench_training --gp-every 4 exit $?"
  timeout 95 python3 benchmarks/bench_synthesis.py --device "$DEVICE" --skip-large --repeat 5 \
    >"$OUT/bench_synthesis.log" 2>&1
  say "bench_synthesis exit $?"
fi

if [ "${LOSO:-1}" != 1 ]; then say "benchmarks only (LOSO=0)"; ls -la "$OUT" >>"$log"; exit 0; fi

# 2. MPS, kept only if a few clients run under it at once; otherwise the processes time-slice the GPU.
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
say "MPS $mps"

# 3. LOSO: the training seconds are what the deadline leaves after start-up, evaluation and packing.
seconds=$(( DEADLINE - $(elapsed) - MARGIN - 20 ))
[ "$seconds" -lt 30 ] && seconds=30
say "LOSO: $RECIPE, seeds $SEEDS, $seconds s of training per job, ablation $ABLATION_STEPS steps"
( while sleep 45; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >>"$log" 2>&1 \
  || break; done ) &
monitor=$!
timeout --kill-after=5 $(( DEADLINE - $(elapsed) - 20 )) python3 experiments/loso.py confirm \
  --prepared "$PREPARED" --out "$WORK" --device "$DEVICE" --recipes "$RECIPE" --seconds "$seconds" \
  --seeds "$SEEDS" --ablation-steps "$ABLATION_STEPS" --parallel 48 --max-folds "$MAX_FOLDS" >>"$log" 2>&1
say "LOSO exit $?"
kill "$monitor" 2>/dev/null
[ "$mps" = on ] && echo quit | nvidia-cuda-mps-control

# 4. Results (gathered from the job records if the pool was stopped), the logs and the bundles.
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
mkdir -p "$WORK/pack"
cp "$WORK"/final-*.safetensors "$WORK/pack/" 2>>"$log"
case "$SEEDS" in  # the first seed's fold bundles (one seed: the ids carry no suffix)
  *,*) cp "$WORK"/bundles/D-*-s"${SEEDS%%,*}".safetensors "$WORK/pack/" 2>>"$log" ;;
  *) cp "$WORK"/bundles/D-*.safetensors "$WORK/pack/" 2>>"$log" ;;
esac
(cd "$WORK/pack" && tar -cf - . | split -b 15m -d - "$OUT/bundles.tar.part-")
tail -c 3000 "$WORK"/jobs/*.log 2>/dev/null | grep -i -B2 -A8 "error\|traceback" | head -60 >>"$log"
ls -la "$OUT" >>"$log"
say "done"
