"""Atomic, rotating training checkpoints that load as plain data.

Layout under ``root`` (usually ``<output_dir>/checkpoints``)::

    step_00000100/            one finished checkpoint (a directory appears only when complete)
        meta.json             {"step": 100, "world_size": 2, "files": {"model.pt": <bytes>, ...}, ...}
        model.pt, optimizer.pt, scheduler.pt, ...   one file per key of ``shared`` (written by rank 0)
        rank0.pt, rank1.pt    per-rank state (RNG, data position) from each process
        sharded/              sharded runs (FSDP2) only: each rank's shards of the model and optimizer
                              tensors (torch.distributed.checkpoint: __<rank>_0.distcp + .metadata),
                              their sizes recorded in meta.json's "sharded_files"
    step_00000200.tmp/        being written; ignored, removed by ``remove_stale_tmp`` and the next save

Writing: every process writes into ``step_XXXXXXXX.tmp`` and fsyncs its files; after a barrier,
rank 0 records every file's size in ``meta.json``, fsyncs the folder and renames it to its final
name (``os.replace`` of a directory is atomic on POSIX), then fsyncs ``root``. A run killed
mid-save never leaves a half-written checkpoint that ``latest_checkpoint`` would pick. A full disk
raises ``CheckpointWriteError`` ("no space left on <root>") after removing the partial folder.

Loading: every file is read with ``torch.load(weights_only=True)`` only, so a checkpoint can hold
tensors, numbers, strings and containers of them, never code. Optimizer states with projector
objects (GaLore, APOLLO, Fira) are stored as plain attributes and rebuilt (``safe_state``). A file
that the safe load refuses raises ``UnsafeCheckpointError`` naming it. A damaged checkpoint (a
missing, empty or truncated file, unreadable ``meta.json``) is skipped by ``load`` with a ``CheckpointWarning``
naming what is wrong, and the previous complete checkpoint is used.

A sharded checkpoint (``sharded=True``) also loads on another number of processes: ``load`` then
returns ``local = {"previous_ranks": [rank0 state, rank1 state, ...]}`` (the caller converts them);
``.metadata`` and the tensor files are read by ``gwt_lab.distributed.load_sharded`` without unpickling
code.

Only the newest ``keep_last`` checkpoints are kept. The barrier is a callable (e.g.
``accelerator.wait_for_everyone``) so this module stays free of any launcher.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from gwt_lab.train.faults import fault_point
from gwt_lab.train.safe_state import from_plain, to_plain

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_SHARDED_FILE = re.compile(r"^(\.metadata|__\d+_\d+\.distcp)$")
SHARDED_DIR = "sharded"


class CheckpointError(ValueError):
    """A checkpoint cannot be used (damaged or unsafe); the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds something other than tensors, numbers and strings."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint that this run cannot use (e.g. written by another number of processes)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the partial folder was removed."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older complete one."""


def _noop() -> None:
    return None


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Finished checkpoint directories under ``root``, oldest first (empty list when none).

    "Finished" means renamed from ``.tmp``; use ``checkpoint_problem`` to check the files."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def read_meta(path: str | os.PathLike) -> dict:
    """``meta.json`` of checkpoint ``path``; ``CheckpointError`` naming the file if missing or unreadable."""
    file = Path(path) / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or meta["step"] < 0:
        raise CheckpointError(f"{file} has no non-negative integer 'step'")
    world_size = meta.get("world_size", 1)
    if not isinstance(world_size, int) or not 1 <= world_size <= 1 << 20:
        raise CheckpointError(f"{file}: 'world_size' must be a positive integer, not {world_size!r}")
    files = meta.get("files")
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(k, str) and "/" not in k and k.endswith(".pt") and isinstance(v, int) for k, v in files.items())):
        raise CheckpointError(f"{file}: 'files' must map file names (*.pt) to byte sizes")
    sharded = meta.get("sharded_files")
    if sharded is not None and not (isinstance(sharded, dict) and sharded and all(
            isinstance(k, str) and _SHARDED_FILE.match(k) and isinstance(v, int) for k, v in sharded.items())):
        raise CheckpointError(f"{file}: 'sharded_files' must map shard file names (.metadata, __<r>_<i>.distcp) to "
                              "byte sizes")
    return meta


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why checkpoint folder ``path`` cannot be used (a short message naming the file), or None when every
    file recorded in its ``meta.json`` is present with its recorded size (cheap: no file is read)."""
    path = Path(path)
    try:
        meta = read_meta(path)
    except CheckpointError as err:
        return str(err)
    files = meta.get("files")
    if files is None:  # written before sizes were recorded: every file must at least be non-empty
        files = {p.name: None for p in path.glob("*.pt")}
        files.update({f"rank{r}.pt": None for r in range(int(meta.get("world_size", 1)))})
    files = dict(files)
    files.update({f"{SHARDED_DIR}/{name}": size for name, size in (meta.get("sharded_files") or {}).items()})
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing" if not os.path.lexists(file) else f"{file} is not a regular file"
        actual = file.stat().st_size
        if actual == 0:
            return f"{file} is empty"
        if size is not None and actual != size:
            return f"{file} has {actual} bytes, {size} were written (truncated or damaged)"
    return None


def latest_checkpoint(root: str | os.PathLike, complete: bool = False) -> Path | None:
    """The newest finished checkpoint directory under ``root``, or None.

    ``complete=True``: skip newer folders that are damaged (see ``checkpoint_problem``), each with a
    ``CheckpointWarning`` naming what is wrong. ``CheckpointManager.load`` always does this."""
    for path in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(path) if complete else None
        if problem is None:
            return path
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}", CheckpointWarning, stacklevel=2)
    return None


def safe_load(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on CPU, with projector objects rebuilt (``safe_state``).

    Raises ``UnsafeCheckpointError`` when the file holds anything else than plain data, and
    ``CheckpointError`` when it is missing or unreadable; both name the file. Never unpickles code."""
    path = Path(path)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            reasons = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unpickler error" in line]
            detail = reasons[0] if reasons else "refused by torch.load(weights_only=True)"
            # keep torch's reason, not its advice to allow-list the class or to load without weights_only
            detail = detail.replace("WeightsUnpickler error: ", "").split(" was not an allowed global")[0]
            detail = detail.split(". Please")[0].rstrip(".")
            raise UnsafeCheckpointError(
                f"{path} holds objects that are not plain tensors/numbers ({detail}); it was not loaded. It was "
                "not written by this program or was altered: delete that checkpoint folder to resume from an "
                "older one") from None
        raise CheckpointError(f"{path} is damaged ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {first})") from None
    try:
        return from_plain(value, path.stem)
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(value, path: Path) -> None:
    """``torch.save`` through a Python file (so a full disk raises ``OSError(ENOSPC)``), then fsync."""
    with open(path, "wb") as f:
        torch.save(to_plain(value, path.stem), f)
        f.flush()
        os.fsync(f.fileno())


class CheckpointManager:
    """Save and load checkpoints under ``root``.

    Args:
        root: checkpoint folder (created on first save).
        keep_last: how many finished checkpoints to keep (>= 1).
        rank, world_size: this process and the number of processes.
        barrier: callable that blocks until every process reaches it (no-op for one process).
        sharded: checkpoints hold sharded tensors (``save(..., sharded=...)``) and may be loaded by
            another number of processes.
    """

    def __init__(self, root: str | os.PathLike, keep_last: int = 2, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] | None = None, sharded: bool = False):
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last={keep_last!r} must be an integer >= 1 (config key trainer.keep_last_checkpoints)")
        self.root = Path(root)
        self.keep_last = int(keep_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.barrier = barrier or _noop
        self.sharded = bool(sharded)

    def remove_stale_tmp(self) -> list[Path]:
        """Delete ``*.tmp`` folders of interrupted saves; returns what was removed. Call it on the main
        process once it holds the run folder's lock (``lock_run_dir``): a ``.tmp`` folder may belong to
        a live run until then. Every save also removes them first."""
        stale = sorted(self.root.glob("*.tmp")) if self.root.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def latest(self, complete: bool = True) -> Path | None:
        """The newest (complete, by default) checkpoint folder, or None."""
        return latest_checkpoint(self.root, complete)

    def save(self, step: int, shared: dict, local: dict, meta: dict | None = None, sharded: dict | None = None) -> Path:
        """Write checkpoint ``step``: ``shared`` (rank 0 only; one file per key) and this rank's ``local``;
        ``sharded``: a flat dict of (DTensor) tensors every rank writes its shards of (collective,
        ``gwt_lab.distributed.save_sharded``) into ``sharded/``.

        Every process must call it (it contains barriers). Returns the final directory. A full disk
        (or another write error) removes the partial folder and raises ``CheckpointWriteError``."""
        final = self.root / f"step_{int(step):08d}"
        tmp = self.root / f"step_{int(step):08d}.tmp"
        try:
            if self.rank == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self.remove_stale_tmp()
                tmp.mkdir()
            self.barrier()
            _save_file(local, tmp / f"rank{self.rank}.pt")
            fault_point(f"checkpoint_write:{int(step)}")
            if self.rank == 0:
                for key, value in shared.items():
                    _save_file(value, tmp / f"{key}.pt")
            if sharded is not None:
                from gwt_lab.distributed import save_sharded

                save_sharded(sharded, tmp / SHARDED_DIR)
            self.barrier()
            if self.rank == 0:
                files = {p.name: p.stat().st_size for p in sorted(tmp.glob("*.pt"))}
                info = {"step": int(step), "world_size": self.world_size, "time": time.time(), **(meta or {}),
                        "files": files}
                if sharded is not None:
                    info["sharded_files"] = {p.name: p.stat().st_size for p in sorted((tmp / SHARDED_DIR).iterdir())}
                with open(tmp / "meta.json", "w") as f:
                    f.write(json.dumps(info, indent=1))
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                if final.exists():  # same step saved twice (e.g. periodic save then signal): replace it
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(self.root)
                fault_point(f"checkpoint_renamed:{int(step)}")
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointWriteError(err.errno, f"no space left on {self.root} while writing checkpoint step "
                                           f"{int(step)}; the partial checkpoint was removed. Free space and "
                                           "continue with resume=true") from None
            raise CheckpointWriteError(err.errno, f"cannot write checkpoint step {int(step)} under {self.root} "
                                       f"({err}); the partial checkpoint was removed") from None
        if self.rank == 0:
            for old in list_checkpoints(self.root)[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def _load_one(self, path: Path, keys: tuple[str, ...] | None) -> tuple[dict, dict, dict]:
        meta = read_meta(path)
        other_world = int(meta.get("world_size", 1)) != self.world_size
        if other_world and self.sharded and meta.get("sharded_files"):
            problem = checkpoint_problem(path)
            if problem is not None:
                raise CheckpointError(problem)
            names = keys if keys is not None else tuple(sorted(
                Path(n).stem for n in meta.get("files") or {} if not re.fullmatch(r"rank\d+\.pt", n)))
            shared = {name: safe_load(path / f"{name}.pt") for name in names}
            previous = [safe_load(path / f"rank{r}.pt") for r in range(int(meta["world_size"]))]
            return shared, {"previous_ranks": previous}, meta
        if self.sharded != bool(meta.get("sharded_files")):
            kind = "sharded (distributed=fsdp2)" if meta.get("sharded_files") else "unsharded (distributed=ddp)"
            raise CheckpointMismatchError(f"checkpoint {path} is {kind}; resume with the distributed setting it was "
                                          "written with")
        if other_world:
            raise CheckpointMismatchError(f"checkpoint {path} was written by {meta['world_size']} processes but this run has "
                             f"{self.world_size}; resume with the same number of processes")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(problem)
        recorded = meta.get("files") or {p.name: None for p in path.glob("*.pt")}
        names = keys if keys is not None else tuple(
            sorted(Path(n).stem for n in recorded if not re.fullmatch(r"rank\d+\.pt", n)))
        shared = {name: safe_load(path / f"{name}.pt") for name in names}
        local = safe_load(path / f"rank{self.rank}.pt")
        return shared, local, meta

    def load(self, path: str | os.PathLike | None = None, keys: tuple[str, ...] | None = None) -> tuple[dict, dict, dict]:
        """Load ``(shared, local, meta)`` from ``path`` (default: the latest checkpoint).

        ``local`` is this rank's file; a checkpoint written with a different number of processes
        raises ``CheckpointMismatchError`` (a ``ValueError``) because data positions are per rank. When ``path`` (or the latest) is
        damaged, older complete checkpoints of ``root`` are tried, each skip warned with
        ``CheckpointWarning``; a file holding non-plain data raises ``UnsafeCheckpointError`` (no
        fallback). ``meta["path"]`` is the folder actually loaded.
        """
        found = list_checkpoints(self.root)
        if path is None:
            candidates = list(reversed(found))
        else:
            path = Path(path)
            older = [p for p in found if p.resolve().parent == path.resolve().parent
                     and int(_STEP_DIR.match(p.name).group(1)) < int(_STEP_DIR.match(path.name).group(1))] \
                if _STEP_DIR.match(path.name) else []
            candidates = [path, *reversed(older)]
        if not candidates:
            raise FileNotFoundError(f"no finished checkpoint under {self.root}")
        problems = []
        for candidate in candidates:
            try:
                shared, local, meta = self._load_one(candidate, keys)
            except (UnsafeCheckpointError, CheckpointMismatchError):
                raise
            except CheckpointError as err:
                problems.append(str(err))
                warnings.warn(f"skipping damaged checkpoint {candidate}: {err}", CheckpointWarning, stacklevel=2)
                continue
            meta["path"] = str(candidate)
            return shared, local, meta
        raise CheckpointError(f"no usable checkpoint under {self.root}: " + "; ".join(problems))
