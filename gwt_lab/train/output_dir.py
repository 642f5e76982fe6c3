"""Refuse to mix two runs in one output directory.

A directory "belongs to a run" when it holds any of ``RUN_MARKERS`` (checkpoints, metrics,
a result). Starting a new run there needs ``resume=true``; otherwise ``check_output_dir``
raises before anything is written, so another run's files are never overwritten.

Two live processes never share a run folder: the main process holds ``lock_run_dir(path)`` (an
exclusive ``fcntl.flock`` on ``<path>/.run.lock``, holding its pid) while it writes there. The
operating system drops the lock when the process dies, so the lock of a killed run never blocks
its resume. The default ``output_dir`` ends with ``${run_suffix:}`` (``run_suffix()``), which
tells apart runs started in the same second.
"""
from __future__ import annotations

import fcntl
import os
import socket
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


LOCK_NAME = ".run.lock"


class RunDirLockedError(OutputDirError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder; release with ``release()`` or by leaving a ``with`` block."""

    def __init__(self, path: Path, fd: int):
        self.path = path  # the lock file
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so a waiting process never locks a removed file
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)  # the OS drops the flock with the last descriptor
            except OSError:
                pass


def _holder_pid(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().split()
    except OSError:
        return "unknown"
    return text[0] if text else "unknown"


def lock_run_dir(path: str | os.PathLike, key: str = "output_dir") -> RunLock:
    """Take the exclusive lock of run folder ``path`` (created if missing) for this process.

    Raises ``RunDirLockedError``: "output_dir <path> is in use by another run (pid N)" when a live
    process holds it. A lock file left by a dead process does not block (the OS released its lock).
    Only the main process of a multi-process run should call it. Use as ``with lock_run_dir(p): ...``
    or keep the returned ``RunLock`` and call ``release()`` at exit.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_file = path / LOCK_NAME
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(f"{key} {path} is in use by another run (pid {_holder_pid(lock_file)}); wait "
                                    f"for it to finish or choose another {key}=...") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder may have removed the file between our open and lock: retry on the new one
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return RunLock(lock_file, fd)


_SUFFIX: str | None = None


def run_suffix() -> str:
    """A short tag that differs between runs started at the same moment and is the same in every process
    of one run: the Slurm job (and array task) id under Slurm, else host name and the pid of the
    launcher (``torchrun``/``accelerate launch``, shared by its local ranks) or of this process.
    Registered as the OmegaConf resolver ``${run_suffix:}`` for the default ``output_dir``."""
    global _SUFFIX
    if _SUFFIX is None:
        env = os.environ
        if env.get("SLURM_JOB_ID"):
            job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
            task = env.get("SLURM_ARRAY_TASK_ID")
            _SUFFIX = f"job{job}" + (f"_{task}" if task else "")
        else:
            pid = os.getppid() if "LOCAL_RANK" in env else os.getpid()
            _SUFFIX = f"{socket.gethostname().split('.')[0]}-{pid}"
    return _SUFFIX


def register_resolvers() -> None:
    """Register ``${run_suffix:}`` with OmegaConf (idempotent); done when this module is imported."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_suffix"):
        OmegaConf.register_new_resolver("run_suffix", run_suffix, use_cache=True)


register_resolvers()
