#!/usr/bin/env bash
# The shipped demo model and the CTS ablation, reproducibly (2-core CPU, about an hour in all).
#   bash train/recipes/demo.sh [RUNS_DIR]
# 1. autoencoders once; 2. the full model (3 stages, CTS) and 3. the same budget without CTS (ablation),
# side by side on one core each; 4. export both; 5. copy the full one into the package as the default bundle.
set -euo pipefail
RUNS=${1:-runs/demo}
COMMON="--size demo --clips 384 --kinds ambient,speech,complex --seed 0"
python -m train.train $COMMON --batch 8 --ae-steps 400 --steps 0 -o "$RUNS/ae"
OMP_NUM_THREADS=1 python -m train.train $COMMON --batch 6 --steps 1000 --resume "$RUNS/ae" -o "$RUNS/full" > "$RUNS/full.log" 2>&1 &
OMP_NUM_THREADS=1 python -m train.train $COMMON --batch 6 --steps 1000 --no-cts --resume "$RUNS/ae" -o "$RUNS/no_cts" > "$RUNS/no_cts.log" 2>&1 &
wait
harmony-rt export "$RUNS/full" -o "$RUNS/full_bundle"
harmony-rt export "$RUNS/no_cts" -o "$RUNS/no_cts_bundle"
rm -rf harmony_rt/default_bundle && cp -r "$RUNS/full_bundle" harmony_rt/default_bundle
