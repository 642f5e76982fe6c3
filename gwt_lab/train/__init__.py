"""Reusable training utilities for the entrypoints (``train_llama.py``, ``finetune_glue.py``).

Nothing here imports Hydra, W&B or Accelerate: callers pass plain values and callables
(e.g. ``barrier=accelerator.wait_for_everyone``, a W&B sink for ``MetricsLogger``).

- ``schedule``: ``build_scheduler(opt, "cosine"|"linear"|"constant", total_steps, warmup_steps, min_lr_ratio)``.
- ``checkpoint``: ``CheckpointManager`` (atomic temp+rename, keep last K, per-rank state), ``latest_checkpoint``.
- ``seeding``: ``seed_everything``, ``rng_state`` / ``set_rng_state`` (exact restore).
- ``signals``: ``StopSignal`` (SIGTERM/SIGUSR1 -> checkpoint and exit).
- ``output_dir``: ``check_output_dir`` (refuse another run's directory without resume).
- ``metrics``: ``MetricsLogger`` (metrics.jsonl + sinks), ``progress_bar``, ``read_metrics``, ``truncate_metrics``.
- ``results``: ``write_result`` (result.json with config, git commit, metrics), ``git_commit``, ``read_result``.
- ``memory_usage``: ``peak_memory_bytes``, ``reset_peak_memory``.
- ``batching``: ``gradient_accumulation_steps``.
- ``lm_loss``: ``causal_lm_loss_sum`` (sum, count) for exact per-token means, ``count_targets``.
"""
from gwt_lab.train.batching import gradient_accumulation_steps
from gwt_lab.train.lm_loss import causal_lm_loss_sum, count_targets
from gwt_lab.train.checkpoint import CheckpointManager, latest_checkpoint, list_checkpoints
from gwt_lab.train.memory_usage import peak_memory_bytes, peak_rss_bytes, reset_peak_memory
from gwt_lab.train.metrics import MetricsLogger, progress_bar, read_metrics, truncate_metrics
from gwt_lab.train.output_dir import OutputDirError, check_output_dir, inspect_output_dir
from gwt_lab.train.results import git_commit, read_result, write_json_atomic, write_result
from gwt_lab.train.schedule import SCHEDULE_NAMES, build_scheduler, lr_multiplier, warmup_steps_from
from gwt_lab.train.seeding import rng_state, seed_everything, set_rng_state
from gwt_lab.train.signals import StopSignal

__all__ = [
    "CheckpointManager", "MetricsLogger", "OutputDirError", "SCHEDULE_NAMES", "StopSignal",
    "build_scheduler", "causal_lm_loss_sum", "check_output_dir", "count_targets", "git_commit", "gradient_accumulation_steps", "inspect_output_dir",
    "latest_checkpoint", "list_checkpoints", "lr_multiplier", "peak_memory_bytes", "peak_rss_bytes",
    "progress_bar", "read_metrics", "read_result", "reset_peak_memory", "rng_state", "seed_everything",
    "set_rng_state", "truncate_metrics", "warmup_steps_from", "write_json_atomic", "write_result",
]
