"""Fault injection for the reliability tests: ``GWT_FAULT_POINT=<name>`` makes the process kill itself
with SIGKILL when it reaches the named point, as a crash, an out-of-memory kill or Slurm would.

Points (``<step>`` is the optimizer step being saved or logged):

- ``checkpoint_write:<step>``: inside a checkpoint save, after the first file of the ``.tmp`` folder;
- ``checkpoint_renamed:<step>``: right after the checkpoint folder got its final name (before old
  checkpoints are rotated out);
- ``metrics_partial:<step>``: after writing half of that step's ``metrics.jsonl`` line;
- ``result_write``: just before ``result.json`` is written (after the final checkpoint).

Unset (the normal case) it costs one environment lookup per call.
"""
from __future__ import annotations

import os
import signal

ENV = "GWT_FAULT_POINT"


def fault_point(name: str) -> None:
    """SIGKILL this process when ``$GWT_FAULT_POINT`` equals ``name``."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
