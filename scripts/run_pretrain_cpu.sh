#!/usr/bin/env bash
# The CPU pre-training measurements in results/pretrain/ (README "Pre-training results on CPU").
#   scripts/run_pretrain_cpu.sh throughput   # llama_20m, AdamW vs GWT Haar-2 (concurrently): tokens/s, peak RSS
#   scripts/run_pretrain_cpu.sh imdb [adamw haar2 db2 galore]   # small LLaMA on IMDb, same token budget
# then: python scripts/pretrain_summary.py --write
# IMDb runs go one after the other (pass several run names to pick some); outputs go to
# results/pretrain/<study>/<run>/
# (config.yaml, metrics.jsonl, result.json; no checkpoints). Existing run folders are refused by
# train_llama.py's output-dir guard: delete them to measure again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export GWT_DATA_DIR=${GWT_DATA_DIR:-$(realpath ../shared/data)}
export GWT_TOKENIZER_DIR=${GWT_TOKENIZER_DIR:-$(realpath ../shared/tokenizers)}
# One intra-op thread: on a 2-core machine shared with other jobs, 2 OpenMP threads that wait on
# each other ran 3-4x slower than 1 thread (measured here); set OMP_NUM_THREADS=2 on an idle machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
study=${1:?usage: $0 throughput|imdb [runs...]}
shift

pids=()
case "$study" in
throughput)
  # 30 steps of 4 x 256-token sequences (micro-batch 4) on the local C4 sample, fp32. Both runs go
  # at the same time (one thread each) so that they share whatever else loads the machine.
  for opt in adamw gwt; do
    $PY train_llama.py model=llama_20m optimizer=$opt data=c4_local logger=none precision=fp32 cpu=true \
      trainer.max_steps=30 trainer.total_batch_size=4 trainer.micro_batch_size=4 trainer.seq_len=256 \
      trainer.warmup_ratio=0.1 trainer.eval_every=30 trainer.eval_tokens=5000 trainer.checkpoint_every=0 \
      run_name=cpu-llama_20m-$opt output_dir=results/pretrain/throughput_llama20m/$opt &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done ;;
imdb)
  for exp in ${@:-adamw haar2 db2 galore}; do
    $PY train_llama.py experiment=imdb/$exp output_dir=results/pretrain/imdb/$exp
  done ;;
*) echo "unknown study '$study' (throughput|imdb)" >&2; exit 2 ;;
esac
