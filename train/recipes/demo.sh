#!/usr/bin/env bash
# The shipped demo model and the CTS ablation, as they were trained (2-core CPU, about 80 minutes).
#   bash train/recipes/demo.sh [RUNS_DIR]
# 1. autoencoders once (600 steps); 2. the full model (3 stages, CTS) and 3. the same steps without CTS
# (ablation), side by side (the no-CTS steps are ~3x cheaper: one task per step instead of three); 4. export
# both (EMA weights); 5. the full one, with weights stored as fp16 (computed in fp32), becomes the package's
# default bundle; 6. the checks the README quotes.
set -euo pipefail
RUNS=${1:-runs/demo}
STEPS=${STEPS:-6000}
COMMON="--size demo --clips 512 --kinds ambient,ambient,speech,complex --seed 0"
export OMP_WAIT_POLICY=PASSIVE  # two trainings share the cores: no spinning OpenMP threads
OMP_NUM_THREADS=2 python -m train.train $COMMON --batch 8 --ae-steps 600 --steps 0 -o "$RUNS/ae"
OMP_NUM_THREADS=2 python -m train.train $COMMON --batch 8 --steps "$STEPS" --stages 0.1,0.1,0.8 --ckpt-every 1000 \
  --resume "$RUNS/ae" -o "$RUNS/full" > "$RUNS/full.log" 2>&1 &
OMP_NUM_THREADS=1 python -m train.train $COMMON --batch 8 --steps "$STEPS" --stages 0.1,0.1,0.8 --ckpt-every 1000 \
  --no-cts --resume "$RUNS/ae" -o "$RUNS/no_cts" > "$RUNS/no_cts.log" 2>&1 &
wait
harmony-rt export "$RUNS/full" -o "$RUNS/full_bundle"
harmony-rt export "$RUNS/no_cts" -o "$RUNS/no_cts_bundle"
python -m export.shrink "$RUNS/full_bundle" -o harmony_rt/default_bundle
python -m bench.demo_check --seeds 16
python -m bench.ablation --bundle full=harmony_rt/default_bundle --bundle no_cts="$RUNS/no_cts_bundle" --clips 24 \
  --steps 40 -o bench/ABLATION.md
python -m bench.figure "a red ball bounces twice" --seed 1 -o docs/demo.png
