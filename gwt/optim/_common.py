"""Shared pieces of the GWT optimizers: argument checks, group validation, state dtypes, the
backend names, the step scalars, the norm-growth limiter and the ``torch.compile`` of step
functions."""
from __future__ import annotations

import functools
import math
import os
from typing import Callable

import torch

from gwt.wavelets import check_boundary, check_depth, check_level, check_wavelet

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def check_range(key: str, value, low: float, high: float = math.inf, *, low_open=False, high_open=True):
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{key}={value!r} is a tensor; valid: a Python number (tensor values are not supported, "
                         f"pass float({key}))")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{key}={value!r} is out of range; valid: a number in {lo}{low}, {high}{hi}")
    return float(value)


def check_betas(betas, key: str = "betas") -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{key}={betas!r} must be a pair (beta1, beta2), each in [0, 1)")
    return tuple(check_range(f"{key}[{i}]", b, 0.0, 1.0) for i, b in enumerate(betas))


def resolve_state_dtype(state_dtype, key: str = "state_dtype") -> torch.dtype | None:
    """None (fp32, or fp64 for fp64 parameters), or one of STATE_DTYPES (name or dtype)."""
    if state_dtype is None:
        return None
    if isinstance(state_dtype, torch.dtype) and state_dtype in STATE_DTYPES.values():
        return state_dtype
    if isinstance(state_dtype, str) and state_dtype in STATE_DTYPES:
        return STATE_DTYPES[state_dtype]
    raise ValueError(f"{key}={state_dtype!r} is not a state dtype; valid: None, {', '.join(STATE_DTYPES)}")


def compute_dtype(param: torch.Tensor) -> torch.dtype:
    """All optimizer arithmetic is fp32 (fp64 for fp64 parameters)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def state_dtype_for(param: torch.Tensor, state_dtype: torch.dtype | None) -> torch.dtype:
    return state_dtype if state_dtype is not None else compute_dtype(param)


def check_gwt_group(group: dict, param_names: list[str] | None = None) -> None:
    """Validate the GWT keys of one parameter group (wavelet, level, alpha, boundary, limiter)."""
    wavelet, level = group["wavelet"], check_level(group["level"])
    if wavelet is not None:
        check_wavelet(wavelet)
    check_boundary(group["boundary"])
    check_range("alpha", group["alpha"], 0.0, low_open=True)
    if group["limiter"] is not None:
        check_range("limiter", group["limiter"], 1.0)
    if wavelet is None or level == 0:
        return
    for i, p in enumerate(group["params"]):
        name = param_names[i] if param_names else f"#{i} of its group"
        if p.dim() != 2:
            raise ValueError(
                f"parameter {name} of shape {tuple(p.shape)} is in a GWT group (wavelet={wavelet!r}, "
                f"level={level}) but GWT transforms 2-D matrices only; put it in a group with level=0 "
                "(gwt.gwt_param_groups does this)"
            )
        check_depth(tuple(p.shape), wavelet, level, group["boundary"], name)


def check_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    if grad.is_sparse:
        raise RuntimeError(f"sparse gradients are not supported (parameter of shape {tuple(param.shape)}); "
                           "valid: dense gradients")
    if grad.is_complex() or param.is_complex():
        raise RuntimeError(f"complex parameters/gradients are not supported (shape {tuple(param.shape)}); "
                           "valid: real floating-point tensors")


def group_is_gwt(group: dict) -> bool:
    return group["wavelet"] is not None and group["level"] > 0


#: Values of the ``backend`` option; ``None`` reads the environment variable GWT_BACKEND.
BACKENDS = ("auto", "torch", "compile", "cpu", "triton")


def resolve_backend(backend, key: str = "backend") -> str:
    """``backend`` as given, or (None) the environment variable GWT_BACKEND (default ``auto``)."""
    value = os.environ.get("GWT_BACKEND", "auto") if backend is None else backend
    if value not in BACKENDS:
        origin = "environment variable GWT_BACKEND" if backend is None else key
        raise ValueError(f"{origin}={value!r} is not a backend; valid: {', '.join(BACKENDS)}")
    return value


#: Step functions are specialised per matrix shape, level and flags; a model has a handful of
#: shapes, but more than dynamo's default of 8 variants per function is common.
RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """One ``torch.compile`` wrapper per step function (inductor: C++ on CPU, Triton on CUDA).

    Static shapes (each matrix shape gets its own kernel); changing scalars such as the
    learning rate are graph inputs and never trigger a recompile.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(fn, fullgraph=True, dynamic=False)


def bias_correction(step: int, beta1: float, beta2: float) -> float:
    """Released convention: ``sqrt(1 - beta2**t) / (1 - beta1**t)`` multiplies the whole update."""
    return math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


def step_scalars(group: dict, step: int) -> tuple[float, float]:
    """``(step_size, decay)`` of one group at step ``t``: ``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``
    and ``lr * weight_decay`` (computed once per group and step; every backend takes these)."""
    beta1, beta2 = group["betas"]
    return group["lr"] * bias_correction(step, beta1, beta2), group["lr"] * group["weight_decay"]


#: Added to the previous norm in the limiter's ratio (as released).
LIMITER_TINY = 1e-8


def limiter_factor(norm: torch.Tensor, prev_norm: torch.Tensor, gamma: float) -> torch.Tensor:
    """THE norm-growth limiter (Fira, paper Sec. 4.2; docs/update_rule.md, "The norm-growth limiter"), elementwise:
    ``lam = max(norm / (prev + 1e-8), gamma) / gamma``; the limited update is ``update / lam``
    and the next ``prev`` is ``norm / lam``. ``prev`` starts at +inf, so the first step has
    ``lam = 1``. The C kernel of gwt/csrc/haar_cpu.c computes the same in double precision
    (checked against this function by tests/lib/test_gwt_adamw.py)."""
    return torch.clamp(norm / (prev_norm + LIMITER_TINY), min=gamma) / gamma


def norm_growth_limit(update: torch.Tensor, prev_norm: torch.Tensor, gamma: float) -> torch.Tensor:
    """:func:`limiter_factor` of ``||update||``; stores the limited norm in ``prev_norm``."""
    norm = torch.linalg.vector_norm(update)
    lam = limiter_factor(norm, prev_norm, gamma)
    prev_norm.copy_(norm / lam)
    return lam
