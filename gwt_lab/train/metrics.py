"""``metrics.jsonl`` writing, pluggable extra sinks (e.g. W&B), and a tqdm progress bar.

Library code stays free of W&B: an entrypoint adds a sink, e.g.::

    run = wandb.init(project=..., mode="offline", dir=output_dir, config=cfg)
    logger.add_sink(lambda record: run.log(record, step=record["step"]))
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from gwt_lab.jsonl import read_jsonl
from gwt_lab.train.faults import ENV as FAULT_ENV, fault_point


def _jsonable(value):
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible as strings
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (empty list if it does not exist).

    An incomplete last line (a run killed while writing it) is dropped with a warning; any other
    damaged line raises ``ValueError`` naming the file and line number (``gwt_lab.jsonl.read_jsonl``)."""
    return read_jsonl(path, warn_torn=True)


def truncate_metrics(path: str | os.PathLike, after_step: int) -> None:
    """Drop records whose ``step`` is greater than ``after_step`` (used when resuming from a checkpoint
    older than the last logged step, e.g. after a hard kill) and an incomplete last line."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= int(after_step)]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Append one JSON line per record to ``path`` and forward the record to every sink.

    Only the main process should write (pass ``enabled=False`` elsewhere). Each record must
    contain ``step``. Lines are flushed immediately so a killed run keeps what it logged.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.sinks: list[Callable[[dict], None]] = []
        self._file = None

    def add_sink(self, sink: Callable[[dict], None]) -> None:
        self.sinks.append(sink)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        if "step" not in record:
            raise ValueError(f"metrics record {record!r} has no 'step'")
        record = {k: _jsonable(v) for k, v in record.items()}
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
        line = json.dumps(record) + "\n"
        if os.environ.get(FAULT_ENV) == f"metrics_partial:{record['step']}":
            self._file.write(line[:len(line) // 2])
            self._file.flush()
            fault_point(f"metrics_partial:{record['step']}")
        self._file.write(line)
        self._file.flush()
        for sink in self.sinks:
            sink(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
    """A tqdm bar over optimizer steps (disabled on non-main processes). Update its postfix with
    ``bar.set_postfix(loss=..., lr=..., tok_s=...)``."""
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                mininterval=1.0)
