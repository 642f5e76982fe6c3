"""``result.json``: the resolved config, the code version and the final metrics of a finished run.

Schema (see docs/architecture.md, "Run outputs")::

    {"config": {...resolved...}, "git_commit": "<sha>", "git_dirty": false,
     "metrics": {...}, "machine": {...}, "finished_at": "<UTC ISO time>", ...extra}
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from gwt_lab.train.faults import fault_point


def git_commit(repo_dir: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """``(commit sha, has uncommitted changes to tracked files)`` of the repository holding ``repo_dir``
    (default: this package's checkout); ``(None, None)`` outside a git checkout."""
    repo_dir = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def machine_info() -> dict:
    """Short description of where the run happened (for results tables)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON via a temporary file (fsynced) and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_result(output_dir: str | os.PathLike, config: dict, metrics: dict,
                 commit: tuple[str | None, bool | None] | None = None, **extra) -> Path:
    """Write ``<output_dir>/result.json`` with the resolved ``config``, git commit, ``metrics`` and ``extra``.

    ``commit``: ``git_commit()`` taken when the run started (default: taken now).
    """
    fault_point("result_write")
    sha, dirty = commit if commit is not None else git_commit()
    result = {"config": config, "git_commit": sha, "git_dirty": dirty, "metrics": metrics,
              "machine": machine_info(),
              "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    return write_json_atomic(Path(output_dir) / "result.json", result)


def read_result(path: str | os.PathLike) -> dict:
    """Load a ``result.json`` (a path to the file or to its run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    return json.loads(path.read_text())
