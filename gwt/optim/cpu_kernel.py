"""The CPU kernels of the GWT-Haar step and of plain Adam (gwt/csrc/haar_cpu.c), built with the
system C compiler at first use and called through ctypes.

torch.compile's C++ code for the closed form stays scalar when blocks are shorter than a
vector (levels 1-2: B = 2 or 4) and ran 3-5x slower than torch's fused AdamW here; this
kernel walks each row once per pass with no index arithmetic. It handles contiguous fp32
CPU tensors; everything else takes the torch path. ``GWT_CPU_KERNEL=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "haar_cpu.c"
_lock = threading.Lock()
_lib = None
_failed: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("GWT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gwt")
    return Path(root)


def _build() -> ctypes.CDLL:
    code = SOURCE.read_bytes()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    flags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-lm"]
    tag = hashlib.sha256(code + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"haar_cpu_{tag}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *flags, str(SOURCE), "-o", str(out)], check=True, capture_output=True)
            os.replace(out, target)  # atomic: concurrent builders never load a half-written file
    lib = ctypes.CDLL(str(target))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.gwt_haar_pass1.restype = ctypes.c_double
    lib.gwt_haar_pass1.argtypes = [ptr] * 5 + [i64] * 4 + [f32] * 7 + [ctypes.c_int]
    lib.gwt_haar_pass2.restype = None
    lib.gwt_haar_pass2.argtypes = [ptr] * 4 + [i64] * 4 + [f32] * 2 + [ctypes.c_int]
    lib.gwt_adam.restype = None
    lib.gwt_adam.argtypes = [ptr] * 4 + [i64] + [f32] * 7 + [ctypes.c_int]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None if it is disabled or could not be built (reason: ``failure()``)."""
    global _lib, _failed
    if os.environ.get("GWT_CPU_KERNEL", "1") == "0":
        return None
    if _lib is None and _failed is None:
        with _lock:
            if _lib is None and _failed is None:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
                    _failed = f"{type(err).__name__}: {getattr(err, 'stderr', b'') or err}"
    return _lib


def failure() -> str | None:
    return _failed


def applies(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def haar_step(param, grad, exp_avg, exp_avg_sq, offset, slope, level: int, beta1: float, beta2: float,
              eps: float) -> float:
    """Pass 1 for one matrix; returns ||M / denom||^2 (the limiter's input)."""
    rows, n = param.shape
    k = exp_avg.shape[-1]
    return library().gwt_haar_pass1(
        grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), offset.data_ptr(), slope.data_ptr(),
        rows, n, k, 2**level, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, 2.0 ** (level / 2), 2.0 ** (-level / 2), torch.get_num_threads())


def haar_apply(param, grad, offset, slope, level: int, scale: float, decay: float) -> None:
    rows, n = param.shape
    library().gwt_haar_pass2(param.data_ptr(), grad.data_ptr(), offset.data_ptr(), slope.data_ptr(), rows, n,
                             offset.shape[-1], 2**level, scale, decay, torch.get_num_threads())


def adam_step(param, grad, exp_avg, exp_avg_sq, beta1: float, beta2: float, eps: float, step_size: float,
              decay: float) -> None:
    """Plain Adam(W) with the released conventions for one fp32 CPU tensor of any shape."""
    library().gwt_adam(param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                       param.numel(), beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, step_size, 1.0 - decay,
                       torch.get_num_threads())
