"""Refuse to mix two runs in one output directory.

A directory "belongs to a run" when it holds any of ``RUN_MARKERS`` (checkpoints, metrics,
a result). Starting a new run there needs ``resume=true``; otherwise ``check_output_dir``
raises before anything is written, so another run's files are never overwritten.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gwt_lab.train.checkpoint import latest_checkpoint

RUN_MARKERS = ("checkpoints", "metrics.jsonl", "result.json")


class OutputDirError(ValueError):
    """The output directory holds another run and ``resume`` was not requested."""


@dataclass
class OutputDirState:
    path: Path
    exists: bool
    markers: tuple[str, ...]       # which RUN_MARKERS are present
    latest_checkpoint: Path | None  # newest finished checkpoint, if any
    finished: bool                  # result.json present


def inspect_output_dir(path: str | os.PathLike, checkpoint_subdir: str = "checkpoints") -> OutputDirState:
    """Look at ``path`` without changing it."""
    path = Path(path)
    markers = tuple(m for m in RUN_MARKERS if (path / m).exists())
    return OutputDirState(path=path, exists=path.exists(), markers=markers,
                          latest_checkpoint=latest_checkpoint(path / checkpoint_subdir),
                          finished=(path / "result.json").exists())


def check_output_dir(path: str | os.PathLike, resume: bool, key: str = "output_dir",
                     checkpoint_subdir: str = "checkpoints") -> OutputDirState:
    """Raise ``OutputDirError`` if ``path`` holds a run and ``resume`` is false; else return its state.

    ``path`` existing as a file (not a directory) is also an error.
    """
    state = inspect_output_dir(path, checkpoint_subdir)
    if state.exists and not state.path.is_dir():
        raise OutputDirError(f"{key}={str(path)!r} is a file, not a directory; pass a directory path")
    if state.markers and not resume:
        raise OutputDirError(
            f"{key}={str(path)!r} already holds another run ({', '.join(state.markers)}). Pass resume=true to "
            f"continue it, or choose a new {key}=...; nothing was written.")
    return state
