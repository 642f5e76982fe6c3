"""Slurm helpers for runs launched by hydra-submitit-launcher (`hydra/launcher=slurm`).

`SlurmRequeue` is a Hydra callback (referenced by `_target_` from
`configs/hydra/launcher/slurm.yaml`; duck-typed, so this module does not import Hydra). Inside a
Slurm job it

1. exports the torch.distributed variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
   MASTER_PORT) from the Slurm task environment when the job has several tasks, so that
   Accelerate in the entrypoint forms one process group over all tasks and nodes;
2. turns Slurm's pre-timeout signal (submitit asks for USR2, `signal_delay_s` before the time
   limit; `scancel --signal=USR2 <job>` does the same by hand) into the entrypoint's own stop
   signal (SIGUSR1: checkpoint, then exit), and when the process ends without a result.json
   requeues the job (`scontrol requeue $SLURM_JOB_ID`, global rank 0 only). submitit starts the
   requeued job with the same overrides; `sweep_overrides` (from the launcher config) adds
   `resume=true` and a fixed per-job `output_dir` to every sweep point, so the requeued run finds
   its checkpoint and continues.

A run that fails (exception, non-finite loss) is not requeued: only a run that received the
pre-emption signal is.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path

PREEMPT_SIGNAL = "SIGUSR2"  # what submitit's sbatch asks Slurm for (--signal=USR2@<delay>)
STOP_SIGNAL = signal.SIGUSR1  # what train_llama.py / finetune_glue.py checkpoint and exit on


def slurm_distributed_env(environ=os.environ) -> dict[str, str]:
    """torch.distributed env:// variables derived from a Slurm task's environment ({} outside
    Slurm or for a single task)."""
    ntasks = int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")) or 1)
    if "SLURM_JOB_ID" not in environ or ntasks <= 1:
        return {}
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "localhost"
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        hosts = []
    return {
        "RANK": environ.get("SLURM_PROCID", "0"),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": str(ntasks),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "MASTER_ADDR": environ.get("MASTER_ADDR") or (hosts[0] if hosts else "localhost"),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + int(environ["SLURM_JOB_ID"]) % 20000),
    }


class SlurmRequeue:
    """Hydra callback: distributed env from Slurm, and requeue after a pre-emption signal."""

    def __init__(self, output_dir_key: str = "output_dir", max_requeues: int = 20,
                 preempt_signal: str = PREEMPT_SIGNAL, sweep_overrides: dict | None = None,
                 per_job_output_dir: bool = False):
        self.output_dir_key = output_dir_key
        self.sweep_overrides = {str(k): str(v) for k, v in (sweep_overrides or {}).items()}
        if per_job_output_dir:  # the job's own sweep folder (sweep.dir/sweep.subdir), fixed at submission
            self.sweep_overrides[output_dir_key] = "${hydra:runtime.output_dir}"
        self.max_requeues = int(max_requeues)
        self.preempt_signal = preempt_signal
        self.preempted = False
        self.output_dir: Path | None = None
        self._requeued = False

    # -- Hydra callback interface
    def on_multirun_start(self, config=None, **kwargs) -> None:
        """Add `sweep_overrides` (key=value) to the sweep's command-line overrides, except keys the
        command line already sets; so every sweep point gets them. Runs in the submitting process
        before the sweeper reads the overrides (unresolved: interpolations stay for the job)."""
        if not self.sweep_overrides or config is None:
            return
        from omegaconf import open_dict, read_write

        task = config.hydra.overrides.task
        given = {str(o).split("=", 1)[0].lstrip("+~") for o in task}
        with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
            for key, value in self.sweep_overrides.items():
                if key not in given:
                    task.append(f"{key}={value}")

    def on_job_start(self, config=None, **kwargs) -> None:
        if "SLURM_JOB_ID" not in os.environ:
            return
        os.environ.update(slurm_distributed_env())
        output_dir = config.get(self.output_dir_key) if config is not None else None
        self.output_dir = Path(str(output_dir)) if output_dir else None
        sig = getattr(signal, self.preempt_signal)
        signal.signal(sig, self._on_preempt)
        atexit.register(self._requeue_if_stopped)

    def on_job_end(self, config=None, job_return=None, **kwargs) -> None:
        # A run that returned normally after the signal without finishing: requeue now and leave
        # without a result for submitit (the requeued job produces it).
        if self._should_requeue():
            self._requeue()
            raise SystemExit(128 + STOP_SIGNAL)

    def on_run_start(self, config=None, **kwargs) -> None:
        pass

    def on_run_end(self, config=None, **kwargs) -> None:
        pass

    def on_multirun_end(self, config=None, **kwargs) -> None:
        pass

    def on_compose_config(self, config=None, **kwargs) -> None:
        pass

    # -- internals
    def _on_preempt(self, signum, frame) -> None:
        self.preempted = True
        print(f"[slurm] {signal.Signals(signum).name}: pre-emption or time limit; stopping the run for a requeue",
              flush=True)
        handler = signal.getsignal(STOP_SIGNAL)
        if callable(handler):  # the training loop's stop handler: checkpoint after this step, then exit
            handler(STOP_SIGNAL, frame)
            return
        if self._should_requeue():  # not training yet (or already done): nothing to save
            self._requeue()
        raise SystemExit(128 + signum)

    def _should_requeue(self) -> bool:
        if not self.preempted or self._requeued or "SLURM_JOB_ID" not in os.environ:
            return False
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return False
        if self.output_dir is not None and (self.output_dir / "result.json").exists():
            return False  # finished after all
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            print(f"[slurm] not requeueing: already restarted {restarts} times (max_requeues)", flush=True)
            return False
        return True

    def _requeue(self) -> None:
        if self._requeued or os.environ.get("SLURM_PROCID", "0") != "0":
            return
        self._requeued = True
        job_id = os.environ["SLURM_JOB_ID"]
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"  # submitit arrays
        print(f"[slurm] requeueing job {job_id}; it resumes from the last checkpoint", flush=True)
        sys.stdout.flush()
        subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)

    def _requeue_if_stopped(self) -> None:
        if self._should_requeue():
            self._requeue()
