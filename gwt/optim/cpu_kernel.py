"""The CPU kernels of the GWT step (Haar closed form: gwt/csrc/haar_cpu.c; any other wavelet
with boundary ``zero``: gwt/csrc/dwt_cpu.c) and of plain Adam, built with the system C compiler
at first use and called through ctypes.

torch.compile's C++ code for the closed form stays scalar when blocks are shorter than a
vector (levels 1-2: B = 2 or 4) and ran 3-5x slower than torch's fused AdamW here; this
kernel walks each row once per pass with no index arithmetic. It handles contiguous fp32
CPU tensors; everything else takes the torch path. ``GWT_CPU_KERNEL=0`` turns it off;
``GWT_CPU_KERNEL_CFLAGS`` adds compiler flags; builds are cached per source, flags and CPU in
``GWT_CACHE_DIR`` (default ``~/.cache/gwt``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = [Path(__file__).resolve().parents[1] / "csrc" / name for name in ("haar_cpu.c", "dwt_cpu.c")]
_lock = threading.Lock()
_lib = None
_failed: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("GWT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gwt")
    return Path(root)


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), so that a cache
    shared between machines (a cluster's home directory) never loads another CPU's build."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL:
    code = b"".join(source.read_bytes() for source in SOURCES)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    # GWT_CPU_KERNEL_CFLAGS: extra compiler flags, after the defaults (e.g. -march=x86-64-v2)
    extra = shlex.split(os.environ.get("GWT_CPU_KERNEL_CFLAGS", ""))
    flags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", *extra, "-lm"]
    tag = hashlib.sha256(code + " ".join([compiler, *flags, _cpu_identity()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gwt_cpu_{tag}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(out)], check=True, capture_output=True)
            os.replace(out, target)  # atomic: concurrent builders never load a half-written file
    lib = ctypes.CDLL(str(target))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    f64 = ctypes.c_double
    lib.gwt_haar_step.restype = ctypes.c_int
    lib.gwt_haar_step.argtypes = [i64] + [ptr] * 5 + [i64] * 4 + [f32] * 7 + [f64, f64, f32, ctypes.c_int]
    lib.gwt_adam.restype = None
    lib.gwt_adam.argtypes = [i64] + [ptr] * 5 + [f32] * 7 + [ctypes.c_int]
    lib.gwt_dwt_pass1.restype = ctypes.c_int
    lib.gwt_dwt_pass1.argtypes = [i64] + [ptr] * 3 + [i64, ptr, i64] + [ptr] * 4 + [i64] + [f32] * 5 + [ptr, ctypes.c_int]
    lib.gwt_dwt_pass2.restype = ctypes.c_int
    lib.gwt_dwt_pass2.argtypes = [i64] + [ptr] * 4 + [i64, ptr, i64] + [ptr] * 4 + [i64, f32, ptr, f32, ctypes.c_int]
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


def _addresses(tensors) -> torch.Tensor:
    """The data addresses of a list of tensors, as the int64 table the batch kernels take."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


def haar_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, level: int, beta1: float, beta2: float,
              eps: float, step_alpha: float, gamma: float | None, decay: float) -> None:
    """The GWT-Haar step for same-shape matrices in one call: per matrix pass 1, the limiter
    (``prev_norms``: fp32 0-d tensors updated in place; None without limiter), pass 2."""
    rows, n = params[0].shape
    tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    prev_table = _addresses(prev_norms) if prev_norms is not None else None
    failed = library().gwt_haar_step(
        len(params), *(t.data_ptr() for t in tables), prev_table.data_ptr() if prev_table is not None else None,
        rows, n, exp_avgs[0].shape[-1], 2**level, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps,
        2.0 ** (level / 2), 2.0 ** (-level / 2), step_alpha, gamma or 1.0, decay, torch.get_num_threads())
    if failed:
        raise MemoryError("gwt_haar_step: could not allocate its per-thread row scratch")


def adam_step(params, grads, exp_avgs, exp_avg_sqs, beta1: float, beta2: float, eps: float, step_size: float,
              decay: float) -> None:
    """Plain Adam(W) with the released conventions for fp32 CPU tensors of any shapes (one region)."""
    tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    numels = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    library().gwt_adam(len(params), *(t.data_ptr() for t in tables), numels.data_ptr(), beta1, beta2, 1.0 - beta1,
                       1.0 - beta2, eps, step_size, 1.0 - decay, torch.get_num_threads())


#: Longest filter the general kernel takes (its per-phase filter tables hold 64 taps).
MAX_FILTER = 128
MAX_LEVEL = 32


class DWTPlan:
    """Filters and coefficient lengths of one (row length, wavelet, level): what the general
    kernel needs besides the tensors, built once per shape."""

    def __init__(self, n: int, wavelet: str, level: int):
        import pywt

        from gwt.wavelets import approx_lengths

        w = pywt.Wavelet(wavelet)
        self.flen = w.dec_len
        self.lens = torch.tensor([n, *approx_lengths(n, wavelet, level, "zero")], dtype=torch.int64)
        self.level = level
        # dec_lo, dec_hi, rec_lo, rec_hi as fp32 (float64 filters rounded once)
        self.filters = torch.tensor([w.dec_lo, w.dec_hi, w.rec_lo, w.rec_hi], dtype=torch.float32)

    @staticmethod
    def supports(wavelet: str, boundary: str, level: int) -> bool:
        import pywt

        flen = pywt.Wavelet(wavelet).dec_len
        return boundary == "zero" and flen % 2 == 0 and flen <= MAX_FILTER and level <= MAX_LEVEL

    def _filter_ptrs(self):
        return [self.filters[i].data_ptr() for i in range(4)]

    def step(self, grads, exp_avgs, exp_avg_sqs, beta1: float, beta2: float, eps: float) -> list[float]:
        """Pass 1 for same-shape matrices: moments of A_L in place; returns each ||M / denom||^2."""
        norms_sq = torch.zeros(len(grads), dtype=torch.float64)
        tables = [_addresses(ts) for ts in (grads, exp_avgs, exp_avg_sqs)]
        failed = library().gwt_dwt_pass1(
            len(grads), *(t.data_ptr() for t in tables), grads[0].shape[0], self.lens.data_ptr(), self.level,
            *self._filter_ptrs(), self.flen, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, norms_sq.data_ptr(),
            torch.get_num_threads())
        if failed:
            raise MemoryError("gwt_dwt_pass1: could not allocate its per-thread scratch rows")
        return norms_sq.tolist()

    def apply(self, params, grads, exp_avgs, exp_avg_sqs, eps: float, scales: list[float], decay: float) -> None:
        """Pass 2: W = W - scale_c * synthesis(N, D / denom), then W -= decay * W."""
        tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
        scale_table = torch.tensor(scales, dtype=torch.float32)
        failed = library().gwt_dwt_pass2(
            len(params), *(t.data_ptr() for t in tables), params[0].shape[0], self.lens.data_ptr(), self.level,
            *self._filter_ptrs(), self.flen, eps, scale_table.data_ptr(), decay, torch.get_num_threads())
        if failed:
            raise MemoryError("gwt_dwt_pass2: could not allocate its per-thread scratch rows")
