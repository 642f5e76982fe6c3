"""Atomic, rotating training checkpoints.

Layout under ``root`` (usually ``<output_dir>/checkpoints``)::

    step_00000100/            one finished checkpoint (a directory appears only when complete)
        meta.json             {"step": 100, "world_size": 2, ...}
        model.pt, optimizer.pt, scheduler.pt, ...   one file per key of ``shared`` (written by rank 0)
        rank0.pt, rank1.pt    per-rank state (RNG, data position) from each process
    step_00000200.tmp/        being written; ignored and removed by the next save

Every process writes into ``step_XXXXXXXX.tmp``; after a barrier, rank 0 renames it to its
final name (``os.replace`` of a directory is atomic on POSIX), so a run killed mid-save never
leaves a half-written checkpoint that ``latest()`` would pick. Only the newest ``keep_last``
checkpoints are kept. The barrier is a callable (e.g. ``accelerator.wait_for_everyone``) so
this module stays free of any launcher.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _noop() -> None:
    return None


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Finished checkpoint directories under ``root``, oldest first (empty list when none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest finished checkpoint directory under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # e.g. a baseline optimizer that keeps Python objects in its state
        warnings.warn(f"{path} does not load with weights_only=True ({type(err).__name__}); loading it as a full "
                      "pickle because it was written by this run's own checkpointing")
        return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointManager:
    """Save and load checkpoints under ``root``.

    Args:
        root: checkpoint folder (created on first save).
        keep_last: how many finished checkpoints to keep (>= 1).
        rank, world_size: this process and the number of processes.
        barrier: callable that blocks until every process reaches it (no-op for one process).
    """

    def __init__(self, root: str | os.PathLike, keep_last: int = 2, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] | None = None):
        if int(keep_last) < 1:
            raise ValueError(f"keep_last={keep_last!r} must be >= 1 (config key trainer.keep_last_checkpoints)")
        self.root = Path(root)
        self.keep_last = int(keep_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.barrier = barrier or _noop

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def save(self, step: int, shared: dict, local: dict, meta: dict | None = None) -> Path:
        """Write checkpoint ``step``: ``shared`` (rank 0 only; one file per key) and this rank's ``local``.

        Every process must call it (it contains barriers). Returns the final directory.
        """
        final = self.root / f"step_{int(step):08d}"
        tmp = self.root / f"step_{int(step):08d}.tmp"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.barrier()
        torch.save(local, tmp / f"rank{self.rank}.pt")
        if self.rank == 0:
            for key, value in shared.items():
                torch.save(value, tmp / f"{key}.pt")
            info = {"step": int(step), "world_size": self.world_size, "time": time.time(), **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(info, indent=1))
        self.barrier()
        if self.rank == 0:
            if final.exists():  # same step saved twice (e.g. periodic save then signal): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.root)[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def load(self, path: str | os.PathLike | None = None, keys: tuple[str, ...] | None = None) -> tuple[dict, dict, dict]:
        """Load ``(shared, local, meta)`` from ``path`` (default: the latest checkpoint).

        ``local`` is this rank's file; a checkpoint written with a different number of processes
        raises ``ValueError`` because data positions are per rank.
        """
        path = Path(path) if path is not None else self.latest()
        if path is None:
            raise FileNotFoundError(f"no finished checkpoint under {self.root}")
        meta = json.loads((path / "meta.json").read_text())
        if int(meta.get("world_size", 1)) != self.world_size:
            raise ValueError(f"checkpoint {path} was written by {meta['world_size']} processes but this run has "
                             f"{self.world_size}; resume with the same number of processes")
        names = keys if keys is not None else tuple(
            p.stem for p in sorted(path.glob("*.pt")) if not p.stem.startswith("rank"))
        shared = {name: _torch_load(path / f"{name}.pt") for name in names}
        local = _torch_load(path / f"rank{self.rank}.pt")
        return shared, local, meta
