#!/usr/bin/env bash
# The demo size in under an hour on a 2-core CPU: the same model, data and three stages as demo.sh, with
# two cheaper settings (README: what this run reached on the demo check):
#   --ae-frames 4   the video autoencoder (per-frame at temporal stride 1) trains on 4-frame crops: ~3x
#                   cheaper steps, the same function;
#   --cts-frac 0.25 each CTS driven task takes a quarter of the batch: 12 rows a step instead of 24.
# One process at a time with OpenMP's default (spinning) threads: on the AMD EPYC VM, OMP_WAIT_POLICY=PASSIVE
# (what demo.sh uses, where runs share the cores) made a joint step 1.75x slower (0.82 vs 0.47 s).
#   bash train/recipes/quick.sh [RUNS_DIR]       (a new RUNS_DIR: checkpoints of an earlier run are not replaced)
#   python -m bench.demo_check --bundle RUNS_DIR/full_bundle --seeds 16
# CLIPS, AE_STEPS, VOC_STEPS, STEPS override the sizes (a smoke run: CLIPS=16 AE_STEPS=2 VOC_STEPS=2 STEPS=10).
set -euo pipefail
RUNS=${1:-runs/quick}
CLIPS=${CLIPS:-512}
AE_STEPS=${AE_STEPS:-600}
VOC_STEPS=${VOC_STEPS:-400}
STEPS=${STEPS:-5000}
COMMON="--size demo --clips $CLIPS --kinds ambient,ambient,speech,complex --seed 0"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$RUNS"
start=$(date +%s)
python -m train.train $COMMON --batch 8 --ae-steps "$AE_STEPS" --ae-frames 4 --steps 0 -o "$RUNS/ae"
python -m train.vocoder "$RUNS/ae" --steps "$VOC_STEPS" -o "$RUNS/voc"
python -m train.train $COMMON --batch 8 --steps "$STEPS" --cts-frac 0.25 --stages 0.1,0.1,0.8 \
  --resume "$RUNS/ae" -o "$RUNS/full"
python -m train.vocoder "$RUNS/full" --decoder-from "$RUNS/voc" --steps 0 -o "$RUNS/full_voc"
harmony-rt export "$RUNS/full_voc" -o "$RUNS/full_bundle"
echo "trained and exported in $(( ($(date +%s) - start) / 60 )) min: $RUNS/full_bundle"
