#!/usr/bin/env bash
# Reduced-scale GLUE comparison on CPU: all-MiniLM-L6-v2 on STS-B, SST-2, CoLA, MRPC and RTE,
# AdamW vs GWT Haar-2 vs GaLore-1/4 with the same budget (configs/experiment/glue_minilm_cpu.yaml):
# 120 optimizer steps per task (CoLA 100 of batch 32), the first 10% a linear warm-up.
# One run after another; a finished run (result.json present) is skipped, an interrupted one resumed.
# Then the summary table: python scripts/glue_summary.py results/glue/minilm_cpu_warmup
#   usage: [TASKS="stsb cola"] [OPTS="adamw gwt"] [STEPS_stsb=150] [WARMUP_PCT=10] [OUT=folder] scripts/run_glue_minilm_cpu.sh [Hydra overrides...]
# The first, shorter table without warm-up (results/glue/minilm_cpu) came from
#   OUT=results/glue/minilm_cpu WARMUP_PCT=0 STEPS_sst2=60 STEPS_stsb=40 STEPS_cola=30 STEPS_mrpc=30 STEPS_rte=25 scripts/run_glue_minilm_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/glue/minilm_cpu_warmup}
# Optimizer steps per task (batch 16, CoLA 32): 1,920 training examples (CoLA 3,200), 2.9% (SST-2)
# to 77% (RTE) of an epoch; about 5 minutes per run on one core of a 2-core CPU.
declare -A STEPS=([sst2]=120 [stsb]=120 [cola]=100 [mrpc]=120 [rte]=120)
# Warm-up: GWT's first steps at the full learning rate move pretrained weights up to 2,000x lr
# per entry (scripts/first_updates.py), so the reduced runs warm up over the first 10% of steps.
WARMUP_PCT=${WARMUP_PCT:-10}
# One thread: on a shared 2-core machine, two OpenMP threads per process ran 2-4x slower per step.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for task in ${TASKS:-sst2 stsb cola mrpc rte}; do
  override="STEPS_$task"; steps=${!override:-${STEPS[$task]}}
  warmup=$((steps * WARMUP_PCT / 100))
  for opt in ${OPTS:-adamw gwt galore}; do
    dir="$OUT/$task-$opt"
    [ -f "$dir/result.json" ] && { echo "done: $dir"; continue; }
    resume=false; [ -d "$dir" ] && resume=true
    echo "=== $task $opt -> $dir ($(date -u +%H:%M:%S))"
    "$PY" finetune_glue.py experiment=glue_minilm_cpu task="$task" optimizer="$opt" \
      trainer.max_steps="$steps" trainer.warmup_steps="$warmup" output_dir="$dir" resume=$resume "$@"
  done
done
"$PY" scripts/glue_summary.py "$OUT"
