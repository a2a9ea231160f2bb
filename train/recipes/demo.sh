#!/usr/bin/env bash
# The shipped demo model and the CTS ablation, exactly as they were trained (2-core CPU).
#   bash train/recipes/demo.sh [RUNS_DIR]
# 1. autoencoders once (400 steps); 2. the full model (3 stages, CTS) and 3. the same budget without CTS
# (ablation), side by side on one core each: 1000 steps, then resumed to 1900 (the session trained in two
# legs; a resume restarts the data-order generator, so the legs are kept as they ran); 4. export both;
# 5. the full one, with weights stored as fp16 (computed in fp32), becomes the package's default bundle.
set -euo pipefail
RUNS=${1:-runs/demo}
COMMON="--size demo --clips 384 --kinds ambient,speech,complex --seed 0"
python -m train.train $COMMON --batch 8 --ae-steps 400 --steps 0 -o "$RUNS/ae"
for leg in 1 2; do
  if [ $leg = 1 ]; then STEPS=1000; F0="$RUNS/ae"; N0="$RUNS/ae"; else STEPS=1900; F0="$RUNS/full"; N0="$RUNS/no_cts"; fi
  OMP_NUM_THREADS=1 python -m train.train $COMMON --batch 6 --steps $STEPS --resume "$F0" -o "$RUNS/full.$leg" > "$RUNS/full.$leg.log" 2>&1 &
  OMP_NUM_THREADS=1 python -m train.train $COMMON --batch 6 --steps $STEPS --no-cts --resume "$N0" -o "$RUNS/no_cts.$leg" > "$RUNS/no_cts.$leg.log" 2>&1 &
  wait
  rm -rf "$RUNS/full" "$RUNS/no_cts" && mv "$RUNS/full.$leg" "$RUNS/full" && mv "$RUNS/no_cts.$leg" "$RUNS/no_cts"
done
harmony-rt export "$RUNS/full" -o "$RUNS/full_bundle"
harmony-rt export "$RUNS/no_cts" -o "$RUNS/no_cts_bundle"
python -m export.shrink "$RUNS/full_bundle" -o harmony_rt/default_bundle
