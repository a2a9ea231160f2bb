#!/usr/bin/env bash
# Unison vs single-stream Harmony on complex clips (speech + sound events), tiny size, same data and budget.
#   bash train/recipes/unison.sh [RUNS_DIR]
set -euo pipefail
RUNS=${1:-runs/unison}
COMMON="--size tiny --clips 96 --kinds complex --seed 0 --batch 6 --ae-steps 300 --steps 600 --warmup 100"
OMP_NUM_THREADS=1 python -m train.train $COMMON --unison -o "$RUNS/unison" > "$RUNS.unison.log" 2>&1 &
OMP_NUM_THREADS=1 python -m train.train $COMMON -o "$RUNS/harmony" > "$RUNS.harmony.log" 2>&1 &
wait
harmony-rt export "$RUNS/unison" -o "$RUNS/unison_bundle"
harmony-rt export "$RUNS/harmony" -o "$RUNS/harmony_bundle"
python -m bench.unison_compare --unison "$RUNS/unison_bundle" --harmony "$RUNS/harmony_bundle" --clips 12 --steps 30 -o bench/UNISON.md
