"""The CPU kernels of the GWT step (Haar closed form: gwt/csrc/haar_cpu.c; any other wavelet
with boundary ``zero``: gwt/csrc/dwt_cpu.c) and of plain Adam, built with the system C compiler
at first use and called through ctypes.

torch.compile's C++ code for the closed form stays scalar when blocks are shorter than a
vector (levels 1-2: B = 2 or 4) and ran 3-5x slower than torch's fused AdamW here; this
kernel walks each row once per pass with no index arithmetic. It handles contiguous fp32
CPU tensors (the ``cpu`` backend of the optimizers; ``backend="torch"`` never builds it);
``GWT_CPU_KERNEL_CFLAGS`` adds compiler flags; builds are cached per source, flags and CPU in
``GWT_CACHE_DIR`` (default ``~/.cache/gwt``).

Every entry point checks, in Python and before the call, the count, shape, dtype, device and
layout of every tensor the C code reads or writes (the C code trusts its arguments). Each entry
is also a ``torch.library`` operator (``gwt::cpu_haar_step``, ``gwt::cpu_dwt_step``,
``gwt::cpu_adam_step``) with a fake implementation, so ``torch.compile`` treats a kernel as one
opaque operator instead of tracing into ctypes; eager calls skip the dispatcher.
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
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from gwt.optim._common import limiter_factor

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
    """The loaded kernels, or None if they could not be built (reason: ``failure()``). The first
    failure in a process warns once, with the compiler's message."""
    global _lib, _failed
    if _lib is None and _failed is None:
        with _lock:
            if _lib is None and _failed is None:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
                    detail = getattr(err, "stderr", b"") or b""
                    detail = detail.decode(errors="replace").strip() if isinstance(detail, bytes) else str(detail)
                    _failed = f"{type(err).__name__}: {detail or err}"
                    warnings.warn(f"GWT CPU kernels could not be built, the torch backend runs instead "
                                  f"(backend='auto'; backend='torch' or GWT_BACKEND=torch skips the build): "
                                  f"{_failed}", RuntimeWarning, stacklevel=2)
    return _lib


def failure() -> str | None:
    return _failed


def _loaded() -> ctypes.CDLL:
    """The kernels, or RuntimeError with the build's failure."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the GWT CPU kernels are not available ({_failed}); valid: backend='torch'")
    return lib


def applies(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def _addresses(tensors) -> torch.Tensor:
    """The data addresses of a list of tensors, as the int64 table the batch kernels take."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Argument checks: everything the C code relies on, before it runs.

_F32 = torch.float32


def _fits(t: torch.Tensor, shape) -> bool:
    return t.dtype is _F32 and t.is_cpu and t.shape == shape and t.is_contiguous()


def _refuse(kernel: str, what: str, t: torch.Tensor, shape) -> None:
    layout = "contiguous" if t.is_contiguous() else "non-contiguous"
    raise ValueError(f"{kernel}: {what} is a {layout} {t.dtype} tensor of shape {tuple(t.shape)} on {t.device}; "
                     f"the kernel needs a contiguous torch.float32 CPU tensor of shape {tuple(shape)}")


def _check(kernel: str, what: str, tensors, shape, count: int) -> None:
    """Each of ``tensors`` (``count`` of them) is a contiguous fp32 CPU tensor of ``shape``."""
    if len(tensors) != count:
        raise ValueError(f"{kernel}: {count} parameters but {len(tensors)} {what}")
    for i, t in enumerate(tensors):
        if not _fits(t, shape):
            _refuse(kernel, f"{what}[{i}]", t, shape)


def _check_matrices(kernel: str, params, grads, exp_avgs, exp_avg_sqs, prev_norms, state_shape) -> None:
    count = len(params)
    if count == 0:
        raise ValueError(f"{kernel}: no parameters")
    shape = params[0].shape
    if len(shape) != 2:
        raise ValueError(f"{kernel}: parameters must be 2-D matrices, got shape {tuple(shape)}")
    _check(kernel, "params", params, shape, count)
    _check(kernel, "grads", grads, shape, count)
    _check(kernel, "exp_avgs", exp_avgs, state_shape, count)
    _check(kernel, "exp_avg_sqs", exp_avg_sqs, state_shape, count)
    if prev_norms:
        _check(kernel, "prev_norms", prev_norms, torch.Size(()), count)


def _check_scalars(kernel: str, beta1: float, beta2: float, eps: float, gamma: float | None) -> None:
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps > 0.0) or (gamma is not None and not gamma >= 1.0):
        raise ValueError(f"{kernel}: betas=({beta1}, {beta2}), eps={eps}, gamma={gamma}; valid: betas in [0, 1), "
                         "eps > 0, gamma >= 1 or None")


# ---------------------------------------------------------------------------------------------
# GWT-Haar (closed form)

#: Deepest Haar level the kernel takes (block of 2**level entries in an int64).
MAX_HAAR_LEVEL = 40


def haar_state_shape(shape, level: int) -> torch.Size:
    rows, n = shape
    block = 2**level
    return torch.Size((rows, -(-n // block)))


def _haar_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, level, beta1, beta2, eps, step_alpha, gamma,
               decay) -> None:
    kernel = "gwt::cpu_haar_step"
    if not 1 <= level <= MAX_HAAR_LEVEL:
        raise ValueError(f"{kernel}: level={level}; valid: 1..{MAX_HAAR_LEVEL}")
    if prev_norms and gamma is None:
        raise ValueError(f"{kernel}: prev_norms given without gamma")
    _check_scalars(kernel, beta1, beta2, eps, gamma)
    state_shape = haar_state_shape(params[0].shape if params else (0, 0), level)
    _check_matrices(kernel, params, grads, exp_avgs, exp_avg_sqs, prev_norms, state_shape)
    rows, n = params[0].shape
    tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    prev_table = _addresses(prev_norms) if prev_norms else None
    failed = _loaded().gwt_haar_step(
        len(params), *(t.data_ptr() for t in tables), prev_table.data_ptr() if prev_table is not None else None,
        rows, n, state_shape[-1], 2**level, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps,
        2.0 ** (level / 2), 2.0 ** (-level / 2), step_alpha, gamma or 1.0, decay, torch.get_num_threads())
    if failed:
        raise MemoryError("gwt_haar_step: could not allocate its per-thread row scratch")


_MUTATED = ("params", "exp_avgs", "exp_avg_sqs", "prev_norms")


@torch.library.custom_op("gwt::cpu_haar_step", mutates_args=_MUTATED, device_types="cpu")
def _haar_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
             exp_avg_sqs: list[torch.Tensor], prev_norms: list[torch.Tensor], level: int, beta1: float, beta2: float,
             eps: float, step_alpha: float, gamma: float | None, decay: float) -> None:
    _haar_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, level, beta1, beta2, eps, step_alpha, gamma, decay)


@_haar_op.register_fake
def _(*args) -> None:
    return None


def haar_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, level: int, beta1: float, beta2: float,
              eps: float, step_alpha: float, gamma: float | None, decay: float) -> None:
    """The GWT-Haar step for same-shape fp32 matrices in one call: per matrix pass 1, the limiter
    (``prev_norms``: fp32 0-d tensors updated in place; None or [] without limiter), pass 2.
    ``step_alpha`` = step size * alpha, ``decay`` = lr * weight_decay."""
    args = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(prev_norms or ()), level,
            beta1, beta2, eps, step_alpha, gamma, decay)
    if torch.compiler.is_compiling():
        torch.ops.gwt.cpu_haar_step(*args)
    else:
        _haar_step(*args)


# ---------------------------------------------------------------------------------------------
# Plain Adam (level-0 groups), any shapes


def _adam_step(params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, eps, step_size, decay) -> None:
    kernel = "gwt::cpu_adam_step"
    _check_scalars(kernel, beta1, beta2, eps, None)
    count = len(params)
    for name, tensors in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if len(tensors) != count:
            raise ValueError(f"{kernel}: {count} parameters but {len(tensors)} {name}")
    for i, p in enumerate(params):
        shape = p.shape
        for what, t in (("params", p), ("grads", grads[i]), ("exp_avgs", exp_avgs[i]),
                        ("exp_avg_sqs", exp_avg_sqs[i])):
            if not _fits(t, shape):
                _refuse(kernel, f"{what}[{i}]", t, shape)
    if count == 0:
        return
    tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    numels = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    _loaded().gwt_adam(count, *(t.data_ptr() for t in tables), numels.data_ptr(), beta1, beta2, 1.0 - beta1,
                       1.0 - beta2, eps, step_size, 1.0 - decay, torch.get_num_threads())


@torch.library.custom_op("gwt::cpu_adam_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs"),
                         device_types="cpu")
def _adam_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
             exp_avg_sqs: list[torch.Tensor], beta1: float, beta2: float, eps: float, step_size: float,
             decay: float) -> None:
    _adam_step(params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, eps, step_size, decay)


@_adam_op.register_fake
def _(*args) -> None:
    return None


def adam_step(params, grads, exp_avgs, exp_avg_sqs, beta1: float, beta2: float, eps: float, step_size: float,
              decay: float) -> None:
    """Plain Adam(W) with the released conventions for fp32 CPU tensors of any shapes (one region)."""
    args = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), beta1, beta2, eps, step_size, decay)
    if torch.compiler.is_compiling():
        torch.ops.gwt.cpu_adam_step(*args)
    else:
        _adam_step(*args)


# ---------------------------------------------------------------------------------------------
# Any wavelet with boundary "zero"

#: Longest filter the general kernel takes (its per-phase filter tables hold 64 taps).
MAX_FILTER = 128
MAX_LEVEL = 32


class DWTPlan:
    """Filters and coefficient lengths of one (row length, wavelet, level): what the general
    kernel needs besides the tensors, built once per shape (:func:`plan`)."""

    def __init__(self, n: int, wavelet: str, level: int):
        import pywt

        from gwt.wavelets import approx_lengths

        if not self.supports(wavelet, "zero", level) or n < 1:
            raise ValueError(f"gwt::cpu_dwt_step: wavelet={wavelet!r}, level={level}, row length {n} is not "
                             f"supported; valid: even filters up to {MAX_FILTER} taps, levels 1..{MAX_LEVEL}")
        w = pywt.Wavelet(wavelet)
        self.flen = w.dec_len
        self.lens = torch.tensor([n, *approx_lengths(n, wavelet, level, "zero")], dtype=torch.int64)
        self.level = level
        # dec_lo, dec_hi, rec_lo, rec_hi as fp32 (float64 filters rounded once)
        self.filters = torch.tensor([w.dec_lo, w.dec_hi, w.rec_lo, w.rec_hi], dtype=torch.float32)
        self.filter_ptrs = [self.filters[i].data_ptr() for i in range(4)]

    @staticmethod
    def supports(wavelet: str, boundary: str, level: int) -> bool:
        import pywt

        flen = pywt.Wavelet(wavelet).dec_len
        return boundary == "zero" and flen % 2 == 0 and flen <= MAX_FILTER and 1 <= level <= MAX_LEVEL

    def state_shape(self, rows: int) -> torch.Size:
        return torch.Size((rows, int(self.lens[-1])))

    def pass1(self, grads, exp_avgs, exp_avg_sqs, beta1: float, beta2: float, eps: float) -> torch.Tensor:
        """Pass 1 (checked by the caller): moments of A_L in place; returns each ||M / denom||^2 (fp64)."""
        norms_sq = torch.zeros(len(grads), dtype=torch.float64)
        tables = [_addresses(ts) for ts in (grads, exp_avgs, exp_avg_sqs)]
        failed = _loaded().gwt_dwt_pass1(
            len(grads), *(t.data_ptr() for t in tables), grads[0].shape[0], self.lens.data_ptr(), self.level,
            *self.filter_ptrs, self.flen, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, norms_sq.data_ptr(),
            torch.get_num_threads())
        if failed:
            raise MemoryError("gwt_dwt_pass1: could not allocate its per-thread scratch rows")
        return norms_sq

    def pass2(self, params, grads, exp_avgs, exp_avg_sqs, eps: float, scales: torch.Tensor, decay: float) -> None:
        """Pass 2 (checked by the caller): W = W - scale_c * synthesis(N, D / denom), then W -= decay * W."""
        tables = [_addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
        failed = _loaded().gwt_dwt_pass2(
            len(params), *(t.data_ptr() for t in tables), params[0].shape[0], self.lens.data_ptr(), self.level,
            *self.filter_ptrs, self.flen, eps, scales.data_ptr(), decay, torch.get_num_threads())
        if failed:
            raise MemoryError("gwt_dwt_pass2: could not allocate its per-thread scratch rows")


@lru_cache(maxsize=256)
def plan(n: int, wavelet: str, level: int) -> DWTPlan:
    return DWTPlan(n, wavelet, level)


def _checked_plan(kernel: str, what: str, mats, grads, exp_avgs, exp_avg_sqs, prev_norms, wavelet: str,
                  level: int) -> DWTPlan:
    """The plan of same-shape 2-D ``mats`` after checking every tensor against it (before any call)."""
    if not mats or mats[0].dim() != 2:
        raise ValueError(f"{kernel}: {what} must be a non-empty list of 2-D matrices")
    rows, n = mats[0].shape
    the_plan = plan(n, wavelet, level)
    _check_matrices(kernel, mats, grads, exp_avgs, exp_avg_sqs, prev_norms, the_plan.state_shape(rows))
    return the_plan


def _dwt_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, wavelet, level, beta1, beta2, eps, step_alpha,
              gamma, decay) -> None:
    kernel = "gwt::cpu_dwt_step"
    if prev_norms and gamma is None:
        raise ValueError(f"{kernel}: prev_norms given without gamma")
    _check_scalars(kernel, beta1, beta2, eps, gamma)
    the_plan = _checked_plan(kernel, "parameters", params, grads, exp_avgs, exp_avg_sqs, prev_norms, wavelet,
                             level)
    norms_sq = the_plan.pass1(grads, exp_avgs, exp_avg_sqs, beta1, beta2, eps)
    if prev_norms:
        norms = norms_sq.sqrt()
        lam = limiter_factor(norms, torch.stack(prev_norms).double(), gamma)
        torch._foreach_copy_(prev_norms, list((norms / lam).float().unbind()))
        scales = (step_alpha / lam).float()
    else:
        scales = torch.full((len(params),), step_alpha, dtype=torch.float32)
    the_plan.pass2(params, grads, exp_avgs, exp_avg_sqs, eps, scales, decay)


@torch.library.custom_op("gwt::cpu_dwt_step", mutates_args=_MUTATED, device_types="cpu")
def _dwt_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
            exp_avg_sqs: list[torch.Tensor], prev_norms: list[torch.Tensor], wavelet: str, level: int, beta1: float,
            beta2: float, eps: float, step_alpha: float, gamma: float | None, decay: float) -> None:
    _dwt_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, wavelet, level, beta1, beta2, eps, step_alpha,
              gamma, decay)


@_dwt_op.register_fake
def _(*args) -> None:
    return None


def dwt_step(params, grads, exp_avgs, exp_avg_sqs, prev_norms, wavelet: str, level: int, beta1: float,
             beta2: float, eps: float, step_alpha: float, gamma: float | None, decay: float) -> None:
    """GWT with any wavelet of even filter length, boundary ``zero``, for same-shape fp32 matrices:
    pass 1 (moments of A_L in per-thread scratch), the limiter (:func:`limiter_factor`), pass 2."""
    args = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(prev_norms or ()), wavelet, level,
            beta1, beta2, eps, step_alpha, gamma, decay)
    if torch.compiler.is_compiling():
        torch.ops.gwt.cpu_dwt_step(*args)
    else:
        _dwt_step(*args)


def dwt_pass1(grads, exp_avgs, exp_avg_sqs, wavelet: str, level: int, beta1: float, beta2: float,
              eps: float) -> torch.Tensor:
    """Pass 1 of :func:`dwt_step` alone, for same-shape fp32 matrices (checked): the moments of
    A_L in place; returns each matrix's squared norm of ``M / denom`` (fp64), for a limiter whose
    norm is summed over other ranks' rows first (gwt/optim/distributed.py). Also runs Haar
    (``wavelet="haar"``), which equals the closed form with boundary ``zero``."""
    kernel = "gwt::cpu_dwt_pass1"
    _check_scalars(kernel, beta1, beta2, eps, None)
    the_plan = _checked_plan(kernel, "gradients", grads, grads, exp_avgs, exp_avg_sqs, None, wavelet, level)
    return the_plan.pass1(list(grads), list(exp_avgs), list(exp_avg_sqs), beta1, beta2, eps)


def dwt_pass2(params, grads, exp_avgs, exp_avg_sqs, wavelet: str, level: int, eps: float, scales: torch.Tensor,
              decay: float) -> None:
    """Pass 2 of :func:`dwt_step` alone (checked): ``W -= scales[i] * synthesis(N, D / denom)`` with
    the moments pass 1 left, then ``W -= decay * W``; ``scales``: fp32 CPU tensor, one per matrix
    (step size * alpha / limiter factor)."""
    kernel = "gwt::cpu_dwt_pass2"
    the_plan = _checked_plan(kernel, "parameters", params, grads, exp_avgs, exp_avg_sqs, None, wavelet, level)
    if not (eps > 0.0):
        raise ValueError(f"{kernel}: eps={eps}; valid: eps > 0")
    _check(kernel, "scales", [scales], torch.Size((len(params),)), 1)
    the_plan.pass2(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), eps, scales, decay)
