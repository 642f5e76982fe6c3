"""Triton kernels of the GWT-AdamW step: the Haar closed form, any other wavelet with boundary
``zero``, and plain Adam(W), each for all matrices of one group in a constant number of launches.

The update rule is the released one (docs/update_rule.md). Every entry point takes lists of
tensors (parameters, gradients, the two Adam states and, with the limiter, the 0-d fp32
``prev_norm`` of each matrix) and updates them in place. The matrices reach the kernels through
tables of their data addresses (int64 device tensors, cached by address), so nothing is stacked or
copied. ``step_size = lr * sqrt(1 - beta2**t) / (1 - beta1**t)`` and ``decay = lr * weight_decay``
are fp32 tensors on the device (``step_size`` one value for all matrices, or one per matrix as
GWTAdamW's ``capturable=True`` computes them from per-parameter step counts on the device): no value
travels to or from the host during a step, so a step whose address tables and scratch buffers are
already cached can be captured in a CUDA graph.

Two passes, as in the CPU kernels (gwt/csrc/):
- pass 1 reads the gradient once: the level-``l`` approximation (Haar: block means), Adam moments
  in place, and the squared norm of ``M / (sqrt(V) + eps)`` of each matrix, summed with atomic adds
  into a per-matrix buffer (the norm-growth limiter's input);
- pass 2 turns the norm into the limiter factor ``lam``, reads the gradient again and writes
  ``W = W - step_size * alpha / lam * U`` followed by the decoupled decay ``W -= decay * W``, where
  ``U`` is the per-block affine map of the Haar closed form or the synthesis of
  ``[M / denom, D_l / denom, ..., D_1 / denom]`` (details divided by the aligned denominator).
General wavelets run one row per program at a time (a fixed number of programs walks all rows of
all matrices); the row's coefficients of every level live in a per-program scratch row of global
memory that stays in the L1/L2 caches.

All arithmetic is fp32; parameters and gradients may be fp32, bf16 or fp16, states fp32 or bf16.
Triton is imported at the first kernel call, not with the module: ``import gwt`` works without it.
With ``TRITON_INTERPRET=1`` (read when the kernels are first built) the kernels run on CPU tensors
in Triton's interpreter, which is how the test suite checks them without a GPU.
"""
from __future__ import annotations

import os
import threading

import torch

#: Dtypes the kernels read and write (arithmetic is fp32 whatever these are).
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_DTYPES = (torch.float32, torch.bfloat16)
#: Elements of one tile of a Haar program (rows are cut into tiles of whole blocks).
HAAR_TILE = 1024
#: Outputs per inner step of the general-wavelet kernels and Adam elements per program.
DWT_TILE = 256
ADAM_TILE = 1024
#: Programs of the general-wavelet kernels per streaming multiprocessor (each walks rows).
DWT_PROGRAMS_PER_SM = 4
#: Cached address tables and scratch buffers (oldest dropped first beyond this many).
CACHE_LIMIT = 256

tl = None  # triton.language, bound by _kernels() (the kernel bodies look it up as a global)
_lock = threading.Lock()
_built: dict = {}
_tables: dict = {}
_scratch: dict = {}


def available() -> bool:
    """Triton imports and can run here: a CUDA device, or ``TRITON_INTERPRET=1`` (CPU tensors)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------
# Kernel bodies (made into Triton JIT functions by _kernels()).


def _ptr(table, index, DT: tl.constexpr):
    """Entry ``index`` of an address table as a pointer to ``DT``."""
    return tl.load(table + index).to(tl.pointer_type(DT))


def _limiter(sums, c, step_ptr, step_stride, alpha, gamma, LIMIT: tl.constexpr):
    """``step_size * alpha / lam`` of matrix ``c`` and its limited norm (``sums[2c]``: the squared
    norm of this step, ``sums[2c + 1]``: the previous limited norm, copied there by pass 1). The
    step size is ``step_ptr[c * step_stride]``: one for all matrices (stride 0) or one each (1)."""
    scale = tl.load(step_ptr + c * step_stride).to(tl.float32) * alpha
    norm = scale * 0.0  # a tensor in both branches
    if LIMIT:
        norm = tl.sqrt(tl.load(sums + 2 * c))
        prev = tl.load(sums + 2 * c + 1)
        lam = tl.maximum(norm / (prev + 1e-8), gamma) / gamma
        scale = scale / lam
        norm = norm / lam
    return scale, norm


def _haar_pass1(g_tab, m_tab, v_tab, prev_tab, sums, n, k, tiles, beta1, beta2, eps, up,
                G_DT: tl.constexpr, S_DT: tl.constexpr, B: tl.constexpr, BLOCK_K: tl.constexpr,
                LIMIT: tl.constexpr):
    pid, c = tl.program_id(0), tl.program_id(1)  # (tile, row) flattened: rows may exceed a grid dimension's 65535
    tile, row = pid % tiles, pid // tiles
    j = tile * BLOCK_K + tl.arange(0, BLOCK_K)
    col = j[:, None] * B + tl.arange(0, B)[None, :]
    grad = _ptr(g_tab, c, G_DT) + row.to(tl.int64) * n
    g = tl.load(grad + col, mask=col < n, other=0.0).to(tl.float32)
    a = tl.sum(g, axis=1) * (up / B)  # A_l = 2**(l/2) * block mean (zero-padded tail)
    keep = j < k
    at = row.to(tl.int64) * k + j
    m_ptr, v_ptr = _ptr(m_tab, c, S_DT) + at, _ptr(v_tab, c, S_DT) + at
    m = tl.load(m_ptr, mask=keep, other=0.0).to(tl.float32) * beta1 + (1.0 - beta1) * a
    v = tl.load(v_ptr, mask=keep, other=0.0).to(tl.float32) * beta2 + (1.0 - beta2) * a * a
    tl.store(m_ptr, m.to(S_DT), mask=keep)
    tl.store(v_ptr, v.to(S_DT), mask=keep)
    if LIMIT:
        # the norm of the stored (possibly bf16-rounded) moments, as pass 2 reads them
        m = m.to(S_DT).to(tl.float32)
        v = tl.where(keep, v.to(S_DT).to(tl.float32), 1.0)
        normalized = m / (tl.sqrt(v) + eps)
        tl.atomic_add(sums + 2 * c, tl.sum(tl.where(keep, normalized * normalized, 0.0), axis=0))
        if (tile == 0) & (row == 0):
            tl.store(sums + 2 * c + 1, tl.load(_ptr(prev_tab, c, tl.float32)))


def _haar_pass2(p_tab, g_tab, m_tab, v_tab, prev_tab, sums, step_ptr, step_stride, decay_ptr, n, k, tiles, eps, down, alpha, gamma,
                P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, B: tl.constexpr,
                BLOCK_K: tl.constexpr, LIMIT: tl.constexpr):
    pid, c = tl.program_id(0), tl.program_id(1)  # (tile, row) flattened: rows may exceed a grid dimension's 65535
    tile, row = pid % tiles, pid // tiles
    scale, norm = _limiter(sums, c, step_ptr, step_stride, alpha, gamma, LIMIT)
    if LIMIT:
        if (tile == 0) & (row == 0):
            tl.store(_ptr(prev_tab, c, tl.float32), norm)
    decay = tl.load(decay_ptr).to(tl.float32)
    j = tile * BLOCK_K + tl.arange(0, BLOCK_K)
    col = j[:, None] * B + tl.arange(0, B)[None, :]
    inside = col < n
    base = row.to(tl.int64) * n
    g = tl.load(_ptr(g_tab, c, G_DT) + base + col, mask=inside, other=0.0).to(tl.float32)
    abar = tl.sum(g, axis=1) / B
    keep = j < k
    at = row.to(tl.int64) * k + j
    m = tl.load(_ptr(m_tab, c, S_DT) + at, mask=keep, other=0.0).to(tl.float32)
    v = tl.load(_ptr(v_tab, c, S_DT) + at, mask=keep, other=1.0).to(tl.float32)
    slope = 1.0 / (tl.sqrt(v) + eps)
    offset = m * slope * down - abar * slope
    update = offset[:, None] + slope[:, None] * g
    w_ptr = _ptr(p_tab, c, P_DT) + base + col
    w = tl.load(w_ptr, mask=inside, other=0.0).to(tl.float32)
    w = w - scale * update
    w = w - decay * w
    tl.store(w_ptr, w.to(P_DT), mask=inside)


def _adam(p_tab, g_tab, m_tab, v_tab, numels, step_ptr, step_stride, decay_ptr, beta1, beta2, eps,
          P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, BLOCK: tl.constexpr):
    tile, c = tl.program_id(0), tl.program_id(1)
    offs = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < tl.load(numels + c)
    g = tl.load(_ptr(g_tab, c, G_DT) + offs, mask=keep, other=0.0).to(tl.float32)
    m_ptr, v_ptr = _ptr(m_tab, c, S_DT) + offs, _ptr(v_tab, c, S_DT) + offs
    m = tl.load(m_ptr, mask=keep, other=0.0).to(tl.float32) * beta1 + (1.0 - beta1) * g
    v = tl.load(v_ptr, mask=keep, other=0.0).to(tl.float32) * beta2 + (1.0 - beta2) * g * g
    tl.store(m_ptr, m.to(S_DT), mask=keep)
    tl.store(v_ptr, v.to(S_DT), mask=keep)
    w_ptr = _ptr(p_tab, c, P_DT) + offs
    w = tl.load(w_ptr, mask=keep, other=0.0).to(tl.float32)
    w = w - tl.load(step_ptr + c * step_stride).to(tl.float32) * (m / (tl.sqrt(v) + eps))
    w = w - tl.load(decay_ptr).to(tl.float32) * w
    tl.store(w_ptr, w.to(P_DT), mask=keep)


def _analysis(src, len0, dst_a, dst_d, len1, filters, F: tl.constexpr, BLOCK: tl.constexpr,
              WITH_D: tl.constexpr):
    """One analysis level (pywt, mode ``zero``): ``a[o] = sum_t dec_lo[t] * x[2o + 1 - t]`` (and
    ``d`` with dec_hi) for o < len1, x = 0 outside [0, len0)."""
    for start in range(0, len1, BLOCK):
        o = start + tl.arange(0, BLOCK)
        a = tl.zeros([BLOCK], dtype=tl.float32)
        d = tl.zeros([BLOCK], dtype=tl.float32)
        for t in tl.static_range(F):
            i = 2 * o + 1 - t
            x = tl.load(src + i, mask=(i >= 0) & (i < len0), other=0.0).to(tl.float32)
            a += tl.load(filters + t) * x
            if WITH_D:
                d += tl.load(filters + F + t) * x
        tl.store(dst_a + o, a, mask=o < len1)
        if WITH_D:
            tl.store(dst_d + o, d, mask=o < len1)


def _dwt_pass1(g_tab, m_tab, v_tab, prev_tab, sums, scratch, stride, lens, filters, rows, total, beta1, beta2, eps,
               G_DT: tl.constexpr, S_DT: tl.constexpr, F: tl.constexpr, LEVEL: tl.constexpr,
               BLOCK: tl.constexpr, LIMIT: tl.constexpr):
    pid, programs = tl.program_id(0), tl.num_programs(0)
    buf0 = scratch + pid.to(tl.int64) * stride
    n, k = tl.load(lens), tl.load(lens + LEVEL)
    half = n + F  # two ping-pong rows, as in pass 2
    for rid in range(pid, total, programs):
        c, row = rid // rows, rid % rows
        grad = _ptr(g_tab, c, G_DT) + row.to(tl.int64) * n
        _analysis(grad, n, buf0, buf0, tl.load(lens + 1), filters, F, BLOCK, False)
        for lv in tl.static_range(2, LEVEL + 1):
            tl.debug_barrier()
            src = buf0 + ((lv - 2) % 2) * half
            _analysis(src, tl.load(lens + lv - 1), buf0 + ((lv - 1) % 2) * half, src, tl.load(lens + lv),
                      filters, F, BLOCK, False)
        tl.debug_barrier()
        approx = buf0 + ((LEVEL - 1) % 2) * half
        at = row.to(tl.int64) * k
        m_row, v_row = _ptr(m_tab, c, S_DT) + at, _ptr(v_tab, c, S_DT) + at
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, k, BLOCK):
            o = start + tl.arange(0, BLOCK)
            keep = o < k
            a = tl.load(approx + o, mask=keep, other=0.0)
            m = tl.load(m_row + o, mask=keep, other=0.0).to(tl.float32) * beta1 + (1.0 - beta1) * a
            v = tl.load(v_row + o, mask=keep, other=0.0).to(tl.float32) * beta2 + (1.0 - beta2) * a * a
            tl.store(m_row + o, m.to(S_DT), mask=keep)
            tl.store(v_row + o, v.to(S_DT), mask=keep)
            if LIMIT:
                m = m.to(S_DT).to(tl.float32)
                v = v.to(S_DT).to(tl.float32)
                normalized = m / (tl.sqrt(tl.where(keep, v, 1.0)) + eps)
                acc += tl.where(keep, normalized * normalized, 0.0)
        if LIMIT:
            tl.atomic_add(sums + 2 * c, tl.sum(acc, axis=0))
            if row == 0:
                tl.store(sums + 2 * c + 1, tl.load(_ptr(prev_tab, c, tl.float32)))
        tl.debug_barrier()


def _dwt_pass2(p_tab, g_tab, m_tab, v_tab, prev_tab, sums, step_ptr, step_stride, decay_ptr, scratch, stride, lens, detail_at,
               filters, rows, total, eps, alpha, gamma,
               P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, F: tl.constexpr, H: tl.constexpr,
               LEVEL: tl.constexpr, BLOCK: tl.constexpr, LIMIT: tl.constexpr):
    pid, programs = tl.program_id(0), tl.num_programs(0)
    base = scratch + pid.to(tl.int64) * stride
    n, k = tl.load(lens), tl.load(lens + LEVEL)
    details = base + 2 * (n + F)  # D_l at details + detail_at[l]; two ping-pong rows before it
    decay = tl.load(decay_ptr).to(tl.float32)
    for rid in range(pid, total, programs):
        c, row = rid // rows, rid % rows
        scale, norm = _limiter(sums, c, step_ptr, step_stride, alpha, gamma, LIMIT)
        if LIMIT:
            if row == 0:
                tl.store(_ptr(prev_tab, c, tl.float32), norm)
        grad = _ptr(g_tab, c, G_DT) + row.to(tl.int64) * n
        at = row.to(tl.int64) * k
        m_row, v_row = _ptr(m_tab, c, S_DT) + at, _ptr(v_tab, c, S_DT) + at
        # analysis: details of every level (the level-LEVEL approximation is replaced by M / denom)
        _analysis(grad, n, base, details + tl.load(detail_at + 1), tl.load(lens + 1), filters, F, BLOCK, True)
        for lv in tl.static_range(2, LEVEL + 1):
            tl.debug_barrier()
            src = base + ((lv - 2) % 2) * (n + F)
            _analysis(src, tl.load(lens + lv - 1), base + ((lv - 1) % 2) * (n + F), details + tl.load(detail_at + lv),
                      tl.load(lens + lv), filters, F, BLOCK, True)
        tl.debug_barrier()
        # N = M / denom as the coarse row; each detail D_l divided by denom repeated 2**(LEVEL - l) times
        coarse = base + (LEVEL % 2) * (n + F)
        for start in range(0, k, BLOCK):
            o = start + tl.arange(0, BLOCK)
            keep = o < k
            m = tl.load(m_row + o, mask=keep, other=0.0).to(tl.float32)
            v = tl.load(v_row + o, mask=keep, other=1.0).to(tl.float32)
            tl.store(coarse + o, m / (tl.sqrt(v) + eps), mask=keep)
        for lv in tl.static_range(1, LEVEL + 1):
            len_d = tl.load(lens + lv)
            d_row = details + tl.load(detail_at + lv)
            for start in range(0, len_d, BLOCK):
                o = start + tl.arange(0, BLOCK)
                keep = o < len_d
                v = tl.load(v_row + (o >> (LEVEL - lv)), mask=keep, other=1.0).to(tl.float32)
                d = tl.load(d_row + o, mask=keep, other=0.0)
                tl.store(d_row + o, d / (tl.sqrt(v) + eps), mask=keep)
        tl.debug_barrier()
        # synthesis: x[2s + r] = sum_u rec_lo[2(H-1-u) + r] * a[s + u] + rec_hi[2(H-1-u) + r] * d[s + u]
        for step in tl.static_range(LEVEL):
            lv = LEVEL - step
            src = base + ((lv % 2) * (n + F))
            dst = base + (((lv - 1) % 2) * (n + F))
            len0, len1 = tl.load(lens + lv - 1), tl.load(lens + lv)
            d_row = details + tl.load(detail_at + lv)
            for start in range(0, len0, BLOCK):
                i = start + tl.arange(0, BLOCK)
                keep = i < len0
                s, r = i // 2, i % 2
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                for u in tl.static_range(H):
                    tap = 2 * (H - 1 - u) + r
                    ok = keep & (s + u < len1)
                    acc += tl.load(filters + 2 * F + tap, mask=keep, other=0.0) * \
                        tl.load(src + s + u, mask=ok, other=0.0)
                    acc += tl.load(filters + 3 * F + tap, mask=keep, other=0.0) * \
                        tl.load(d_row + s + u, mask=ok, other=0.0)
                if lv > 1:
                    tl.store(dst + i, acc, mask=keep)
                else:
                    w_ptr = _ptr(p_tab, c, P_DT) + row.to(tl.int64) * n + i
                    w = tl.load(w_ptr, mask=keep, other=0.0).to(tl.float32)
                    w = w - scale * acc
                    w = w - decay * w
                    tl.store(w_ptr, w.to(P_DT), mask=keep)
            tl.debug_barrier()


def _kernels() -> dict:
    """The JIT functions, built once per value of TRITON_INTERPRET (read here, at the first call)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    with _lock:
        if interpret not in _built:
            import triton
            import triton.language as language

            globals()["tl"] = language
            _built[interpret] = {name: triton.jit(getattr(fn, "fn", fn)) for name, fn in (
                ("_ptr", _ptr), ("_limiter", _limiter), ("_analysis", _analysis), ("haar_pass1", _haar_pass1),
                ("haar_pass2", _haar_pass2), ("adam", _adam), ("dwt_pass1", _dwt_pass1), ("dwt_pass2", _dwt_pass2))}
        jitted = _built[interpret]
        # the kernels look their helpers up by name among this module's globals: bind this mode's
        for name in ("_ptr", "_limiter", "_analysis"):
            globals()[name] = jitted[name]
        return jitted


# ---------------------------------------------------------------------------------------------
# Host side: checks, cached address tables and scratch, launches.


def _tl_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _remember(cache: dict, key, make):
    value = cache.get(key)
    if value is None:
        with _lock:
            if len(cache) >= CACHE_LIMIT:
                cache.pop(next(iter(cache)))
            value = cache[key] = make()
    return value


def _check(name: str, params, grads, exp_avgs, exp_avg_sqs, prev_norms, state_shape, same_shape: bool) -> tuple:
    """Validate the lists once per set of tensors; returns their address tables (cached, as is the
    verdict: a later call with the same tensors skips the checks)."""
    lists = (params, grads, exp_avgs, exp_avg_sqs) + ((prev_norms,) if prev_norms is not None else ())
    device = params[0].device if params else None
    key = (name, device, tuple(tuple(t.data_ptr() for t in ts) for ts in lists),
           tuple(params[0].shape) if params else (), tuple(exp_avgs[0].shape) if exp_avgs else ())
    tables = _tables.get(key)
    if tables is None:
        _validate(name, params, grads, exp_avgs, exp_avg_sqs, prev_norms, state_shape, same_shape)
        tables = _remember(_tables, key, lambda: tuple(
            torch.tensor(addresses, dtype=torch.int64).to(device) for addresses in key[2]))
    return tables


def _validate(name: str, params, grads, exp_avgs, exp_avg_sqs, prev_norms, state_shape, same_shape: bool) -> None:
    count = len(params)
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if prev_norms is not None:
        lists["prev_norms"] = prev_norms
    if count == 0:
        raise ValueError(f"{name}: params is empty; valid: a non-empty list of tensors")
    for key, values in lists.items():
        if len(values) != count:
            raise ValueError(f"{name}: {key} has {len(values)} tensors but params has {count}; valid: one per param")
    device = params[0].device
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if same_shape and (p.dim() != 2 or p.shape != params[0].shape):
            raise ValueError(f"{name}: params[{i}] has shape {tuple(p.shape)}; valid: 2-D, all of shape "
                             f"{tuple(params[0].shape)}")
        if g.shape != p.shape:
            raise ValueError(f"{name}: grads[{i}] has shape {tuple(g.shape)}; valid: {tuple(p.shape)} (its param's)")
        want = state_shape(p)
        for key, s in (("exp_avgs", m), ("exp_avg_sqs", v)):
            if tuple(s.shape) != tuple(want):
                raise ValueError(f"{name}: {key}[{i}] has shape {tuple(s.shape)}; valid: {tuple(want)}")
            if s.dtype not in STATE_DTYPES or s.dtype != exp_avgs[0].dtype:
                raise ValueError(f"{name}: {key}[{i}] has dtype {s.dtype}; valid: one of "
                                 f"{', '.join(map(str, STATE_DTYPES))}, the same for all states")
        for key, t in (("params", p), ("grads", g)):
            if t.dtype not in PARAM_DTYPES or t.dtype != (params if key == "params" else grads)[0].dtype:
                raise ValueError(f"{name}: {key}[{i}] has dtype {t.dtype}; valid: one of "
                                 f"{', '.join(map(str, PARAM_DTYPES))}, the same within the list")
        for key, t in (("params", p), ("grads", g), ("exp_avgs", m), ("exp_avg_sqs", v)):
            if t.device != device or not t.is_contiguous():
                raise ValueError(f"{name}: {key}[{i}] is on {t.device} (contiguous={t.is_contiguous()}); "
                                 f"valid: contiguous tensors on {device}")
    if prev_norms is not None:
        for i, t in enumerate(prev_norms):
            if t.dim() != 0 or t.dtype != torch.float32 or t.device != device:
                raise ValueError(f"{name}: prev_norms[{i}] is a {t.dtype} tensor of shape {tuple(t.shape)} on "
                                 f"{t.device}; valid: 0-d float32 tensors on {device}")


def _require_matrix(name: str, params) -> None:
    if not params or params[0].dim() != 2:
        shape = tuple(params[0].shape) if params else None
        raise ValueError(f"{name}: params[0] has shape {shape}; valid: a non-empty list of 2-D matrices")


def _scalar(name: str, value, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.device != device:
        raise ValueError(f"{name}={value!r} must be a one-element tensor on {device} (a 0-d fp32 tensor: the "
                         "step scalars stay on the device)")
    return value


def _step_sizes(value, count: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """``step_size``: one element for all ``count`` tensors (stride 0) or ``count`` contiguous
    elements, one each (stride 1: the per-parameter step counts of ``capturable=True``)."""
    if isinstance(value, torch.Tensor) and count > 1 and value.numel() == count and value.device == device \
            and value.dim() == 1 and value.is_contiguous():
        return value, 1
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.device != device:
        raise ValueError(f"step_size={value!r} must be a tensor on {device} with one element, or one per tensor "
                         f"({count}) (fp32: the step scalars stay on the device)")
    return value, 0


def _sums(count: int, device: torch.device) -> torch.Tensor:
    """Per matrix: the squared norm accumulated by pass 1 and the previous limited norm."""
    return torch.zeros(2 * count, dtype=torch.float32, device=device)


def _haar_tile(level: int) -> tuple[int, int]:
    block = 2**level
    return block, max(1, HAAR_TILE // block)


def haar_group(params, grads, exp_avgs, exp_avg_sqs, prev_norms, *, level: int, beta1: float, beta2: float,
               eps: float, alpha: float, gamma: float | None, step_size: torch.Tensor,
               decay: torch.Tensor) -> None:
    """GWT-Haar (closed form, any level, boundary ``zero``) for same-shape matrices: two launches.

    ``prev_norms``: one 0-d fp32 tensor per matrix (+inf before the first step), or None together
    with ``gamma=None`` when the limiter is off.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"haar_group: level={level!r}; valid: an int >= 1")
    if (prev_norms is None) != (gamma is None):
        raise ValueError("haar_group: prev_norms and gamma must both be given (limiter on) or both None (off)")
    _require_matrix("haar_group", params)
    rows, n = params[0].shape
    block, block_k = _haar_tile(level)
    k = -(-n // block)
    p_tab, g_tab, m_tab, v_tab, *prev = _check("haar_group", params, grads, exp_avgs, exp_avg_sqs, prev_norms,
                                               lambda p: (rows, k), True)
    device = params[0].device
    (step_size, stride), decay = _step_sizes(step_size, len(params), device), _scalar("decay", decay, device)
    kern = _kernels()
    count, limit = len(params), prev_norms is not None
    prev_tab = prev[0] if limit else p_tab  # unused without the limiter
    sums = _sums(count, device)
    tiles = -(-k // block_k)
    grid = (tiles * rows, count)
    dts = dict(G_DT=_tl_dtype(grads[0].dtype), S_DT=_tl_dtype(exp_avgs[0].dtype), B=block, BLOCK_K=block_k,
               LIMIT=limit)
    kern["haar_pass1"][grid](g_tab, m_tab, v_tab, prev_tab, sums, n, k, tiles, float(beta1), float(beta2), float(eps),
                             2.0 ** (level / 2), **dts)
    kern["haar_pass2"][grid](p_tab, g_tab, m_tab, v_tab, prev_tab, sums, step_size, stride, decay, n, k, tiles,
                             float(eps), 2.0 ** (-level / 2), float(alpha), float(gamma or 1.0),
                             P_DT=_tl_dtype(params[0].dtype), **dts)


def adam_group(params, grads, exp_avgs, exp_avg_sqs, *, beta1: float, beta2: float, eps: float,
               step_size: torch.Tensor, decay: torch.Tensor) -> None:
    """Plain Adam(W) with the released eps convention (``sqrt(V) + eps``, bias correction in
    ``step_size``), tensors of any shapes, one launch."""
    tabs = _check("adam_group", params, grads, exp_avgs, exp_avg_sqs, None, lambda p: p.shape, False)
    device = params[0].device
    (step_size, stride), decay = _step_sizes(step_size, len(params), device), _scalar("decay", decay, device)
    kern = _kernels()
    sizes = tuple(p.numel() for p in params)
    numels = _remember(_tables, (device, "numels", sizes),
                       lambda: torch.tensor(sizes, dtype=torch.int64).to(device))
    grid = (-(-max(sizes) // ADAM_TILE), len(params))
    kern["adam"][grid](*tabs, numels, step_size, stride, decay, float(beta1), float(beta2), float(eps),
                       P_DT=_tl_dtype(params[0].dtype), G_DT=_tl_dtype(grads[0].dtype),
                       S_DT=_tl_dtype(exp_avgs[0].dtype), BLOCK=ADAM_TILE)


class _Plan:
    """Filters (fp32: dec_lo, dec_hi, rec_lo, rec_hi), coefficient lengths and detail offsets of
    one (row length, wavelet, level) on one device."""

    def __init__(self, n: int, wavelet: str, level: int, device: torch.device):
        import pywt

        from gwt.wavelets import approx_lengths, check_depth, check_wavelet

        check_wavelet(wavelet)
        w = pywt.Wavelet(wavelet)
        if w.dec_len % 2:
            raise ValueError(f"dwt_group: wavelet={wavelet!r} has an odd filter length; valid: even-length filters")
        check_depth((1, n), wavelet, level, "zero", f"with rows of length {n}")
        self.flen = w.dec_len
        lens = [n, *approx_lengths(n, wavelet, level, "zero")]
        offsets = [0, 0]
        for length in lens[1:-1]:
            offsets.append(offsets[-1] + length)
        self.k = lens[-1]
        self.stride = 2 * (n + self.flen) + sum(lens[1:])  # two ping-pong rows, then every detail
        self.lens = torch.tensor(lens, dtype=torch.int64).to(device)
        self.detail_at = torch.tensor(offsets, dtype=torch.int64).to(device)
        self.filters = torch.tensor([*w.dec_lo, *w.dec_hi, *w.rec_lo, *w.rec_hi], dtype=torch.float32).to(device)


def _programs(total_rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(total_rows, DWT_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(total_rows, 4)


def dwt_group(params, grads, exp_avgs, exp_avg_sqs, prev_norms, *, wavelet: str, level: int, beta1: float,
              beta2: float, eps: float, alpha: float, gamma: float | None, step_size: torch.Tensor,
              decay: torch.Tensor) -> None:
    """GWT with any pywt wavelet of even filter length, boundary ``zero``, for same-shape matrices:
    two launches (each program transforms whole rows, all levels, in its scratch row)."""
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"dwt_group: level={level!r}; valid: an int >= 1")
    if (prev_norms is None) != (gamma is None):
        raise ValueError("dwt_group: prev_norms and gamma must both be given (limiter on) or both None (off)")
    _require_matrix("dwt_group", params)
    rows, n = params[0].shape
    device = params[0].device
    plan = _remember(_scratch, ("plan", n, wavelet, level, device), lambda: _Plan(n, wavelet, level, device))
    p_tab, g_tab, m_tab, v_tab, *prev = _check("dwt_group", params, grads, exp_avgs, exp_avg_sqs, prev_norms,
                                               lambda p: (rows, plan.k), True)
    (step_size, stride), decay = _step_sizes(step_size, len(params), device), _scalar("decay", decay, device)
    kern = _kernels()
    count, limit = len(params), prev_norms is not None
    total = count * rows
    programs = _programs(total, device)
    scratch = _remember(_scratch, ("rows", programs, plan.stride, device),
                        lambda: torch.empty(programs * plan.stride, dtype=torch.float32, device=device))
    prev_tab = prev[0] if limit else p_tab
    sums = _sums(count, device)
    common = dict(G_DT=_tl_dtype(grads[0].dtype), S_DT=_tl_dtype(exp_avgs[0].dtype), F=plan.flen, LEVEL=level,
                  BLOCK=DWT_TILE, LIMIT=limit)
    kern["dwt_pass1"][(programs,)](g_tab, m_tab, v_tab, prev_tab, sums, scratch, plan.stride, plan.lens,
                                   plan.filters, rows, total, float(beta1), float(beta2), float(eps), **common)
    kern["dwt_pass2"][(programs,)](p_tab, g_tab, m_tab, v_tab, prev_tab, sums, step_size, stride, decay, scratch,
                                   plan.stride, plan.lens, plan.detail_at, plan.filters, rows, total, float(eps),
                                   float(alpha), float(gamma or 1.0), P_DT=_tl_dtype(params[0].dtype),
                                   H=plan.flen // 2, **common)


__all__ = ["available", "haar_group", "dwt_group", "adam_group", "PARAM_DTYPES", "STATE_DTYPES"]
