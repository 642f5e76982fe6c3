#!/usr/bin/env bash
# Reduced-scale GLUE comparison on CPU: all-MiniLM-L6-v2 on STS-B, SST-2, CoLA, MRPC and RTE,
# AdamW vs GWT Haar-2 vs GaLore-1/4 with the same budget (configs/experiment/glue_minilm_cpu.yaml).
# One run after another; a finished run (result.json present) is skipped, an interrupted one resumed.
# Then the summary table: python scripts/glue_summary.py results/glue/minilm_cpu
#   usage: [TASKS="stsb cola"] [STEPS_stsb=150] [OUT=folder] scripts/run_glue_minilm_cpu.sh [Hydra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/glue/minilm_cpu}
# Optimizer steps per task (batch 16, CoLA 32): 400 to 960 training examples, 1.4-16% of an epoch.
# Sized for a 2-core CPU shared with other jobs; tasks whose scores move earliest come first.
declare -A STEPS=([sst2]=60 [stsb]=40 [cola]=30 [mrpc]=30 [rte]=25)
# One thread: on a shared 2-core machine, two OpenMP threads per process ran 2-4x slower per step.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for task in ${TASKS:-sst2 stsb cola mrpc rte}; do
  override="STEPS_$task"; steps=${!override:-${STEPS[$task]}}
  for opt in adamw gwt galore; do
    dir="$OUT/$task-$opt"
    [ -f "$dir/result.json" ] && { echo "done: $dir"; continue; }
    resume=false; [ -d "$dir" ] && resume=true
    echo "=== $task $opt -> $dir ($(date -u +%H:%M:%S))"
    "$PY" finetune_glue.py experiment=glue_minilm_cpu task="$task" optimizer="$opt" \
      trainer.max_steps="$steps" output_dir="$dir" resume=$resume "$@"
  done
done
"$PY" scripts/glue_summary.py "$OUT"
