"""GWT-AdamW: Adam moments on the wavelet approximation of each gradient matrix.

The update rule is the released one (docs/GWT_MATH.md): moments of ``A_l`` only, denominator
``sqrt(V) + eps`` without bias-correcting V, the Fira norm-growth limiter on the compressed
update, details divided by the aligned denominator, inverse transform times ``alpha``, step size
``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``, decoupled weight decay applied after the update.
"""
from __future__ import annotations

import math

import torch

from gwt.optim._common import (
    bias_correction,
    check_betas,
    check_range,
    compiled,
    compute_dtype,
    cpu_kernel_enabled,
    group_is_gwt,
    norm_growth_limit,
)
from gwt.optim import cpu_kernel
from gwt.optim.base import GWT_DEFAULTS, GWTOptimizerBase
from gwt.wavelets import haar_blocks, is_haar_closed_form

#: Matrices of one shape are stepped together, up to this many per compiled call.
GROUP_CHUNK = 8

def _moments(a, exp_avg, exp_avg_sq, beta1: float, beta2: float, eps: float):
    """Adam moments of ``a`` in the compute dtype; returns (M, V, denom, M / denom)."""
    m_new = exp_avg.to(a.dtype) * beta1 + (1 - beta1) * a
    v_new = exp_avg_sq.to(a.dtype) * beta2 + (1 - beta2) * a * a
    denom = v_new.sqrt() + eps
    return m_new, v_new, denom, m_new / denom


def _write_back(param, new_param, decay, exp_avg, m_new, exp_avg_sq, v_new):
    new_param = new_param - decay * new_param  # decoupled weight decay after the update (released order)
    param.copy_(new_param)
    exp_avg.copy_(m_new)
    exp_avg_sq.copy_(v_new)


def adam_step(param, grad, exp_avg, exp_avg_sq, step_size: float, decay: float,
              beta1: float, beta2: float, eps: float):
    """Plain Adam(W) with the released eps convention (groups with level 0)."""
    g = grad.to(compute_dtype(param))
    m_new, v_new, _, normalized = _moments(g, exp_avg, exp_avg_sq, beta1, beta2, eps)
    new_param = param.to(g.dtype) - step_size * normalized
    _write_back(param, new_param, decay, exp_avg, m_new, exp_avg_sq, v_new)


def haar_coefficients(grad, exp_avg, exp_avg_sq, prev_norm, step_size, beta1: float, beta2: float, eps: float,
                      alpha: float, gamma: float, level: int, use_limiter: bool):
    """Pass 1 of GWT-Haar (closed form): moments, limiter and the per-block affine map.

    With abar the zero-padded block mean of G over blocks of B = 2**l, the moments are of
    A_l = 2**(l/2) * abar and the update of every entry of block j is
    ``offset_j + slope_j * G`` with ``slope = 1 / denom`` and
    ``offset = 2**(-l/2) * N - abar / denom`` (docs/GWT_MATH.md, "The Haar closed form").
    Updates the moments; returns (offset, slope, scale) with ``scale = step_size * alpha / lam``.
    Reads G once; the cost does not depend on the level.
    """
    g3 = haar_blocks(grad.to(compute_dtype(grad)), level)  # (m, k, B)
    abar = g3.mean(-1)  # (m, k)
    m_new, v_new, denom, normalized = _moments(abar * 2.0 ** (level / 2), exp_avg, exp_avg_sq,
                                               beta1, beta2, eps)
    exp_avg.copy_(m_new)
    exp_avg_sq.copy_(v_new)
    slope = 1.0 / denom
    offset = normalized * 2.0 ** (-level / 2) - abar * slope
    scale = step_size * alpha
    if use_limiter:
        scale = scale / norm_growth_limit(normalized, prev_norm, gamma)
    return offset, slope, scale


def haar_apply(param, grad, offset, slope, scale, decay, level: int):
    """Pass 2 of GWT-Haar: ``W = (W - scale * (offset + slope * G)) * (1 - lr * wd)`` blockwise."""
    rows, n = param.shape
    g3 = haar_blocks(grad.to(offset.dtype), level)  # (m, k, B)
    update = (offset.unsqueeze(-1) + slope.unsqueeze(-1) * g3).reshape(rows, -1)[:, :n]
    new_param = param.to(offset.dtype) - scale * update
    param.copy_(new_param - decay * new_param)


def gwt_haar_group(params, grads, exp_avgs, exp_avg_sqs, prev_norms, step_size, decay, beta1: float,
                   beta2: float, eps: float, alpha: float, gamma: float, level: int, use_limiter: bool):
    """GWT-Haar for a list of same-shape matrices: one compiled graph, one Python call."""
    for param, grad, exp_avg, exp_avg_sq, prev_norm in zip(params, grads, exp_avgs, exp_avg_sqs, prev_norms):
        offset, slope, scale = haar_coefficients(grad, exp_avg, exp_avg_sq, prev_norm, step_size, beta1, beta2,
                                                 eps, alpha, gamma, level, use_limiter)
        haar_apply(param, grad, offset, slope, scale, decay, level)


def adam_group(params, grads, exp_avgs, exp_avg_sqs, step_size, decay, beta1: float, beta2: float, eps: float):
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        adam_step(param, grad, exp_avg, exp_avg_sq, step_size, decay, beta1, beta2, eps)


def gwt_general_step(param, grad, exp_avg, exp_avg_sq, prev_norm, step_size: float, decay: float,
                     beta1: float, beta2: float, eps: float, alpha: float, gamma: float,
                     use_limiter: bool, transform):
    """GWT with any pywt wavelet: multi-level transform through ptwt (eager)."""
    g = grad.to(compute_dtype(param))
    approx, ctx = transform.analyze(g)
    m_new, v_new, denom, normalized = _moments(approx, exp_avg, exp_avg_sq, beta1, beta2, eps)
    if use_limiter:
        lam = norm_growth_limit(normalized, prev_norm, gamma)
        normalized, denom = normalized / lam, denom * lam
    update = transform.synthesize(normalized, ctx, denom)
    new_param = param.to(g.dtype) - (step_size * alpha) * update
    _write_back(param, new_param, decay, exp_avg, m_new, exp_avg_sq, v_new)


class GWTAdamW(GWTOptimizerBase):
    """Adam(W) whose moments live on the level-``level`` wavelet approximation of each gradient.

    Args:
        params: parameters or groups (see :func:`gwt.gwt_param_groups`). Group keys override the
            defaults below; a group with ``level=0`` or ``wavelet=None`` is plain Adam(W).
        lr, betas, eps, weight_decay: as in AdamW, with the released eps convention
            (``sqrt(V) + eps`` and the bias correction folded into the step size; default eps 1e-6).
        wavelet: any pywt discrete wavelet name (``haar``, ``db2``, ``sym4``, ``coif1``, ...).
        level: transform depth (int >= 1; 0 = plain Adam). States are about 1/2**level the size.
        alpha: scale of the reconstructed update (0.25 in the paper's pre-training).
        boundary: signal extension mode of the transform (``zero`` as released).
        limiter: norm-growth limiter threshold gamma (1.01); None disables it.
        closed_form: use the Haar closed form where it applies (False forces the ptwt path).
        state_dtype: None (fp32, fp64 for fp64 parameters), ``"float32"`` or ``"bfloat16"``.
            Arithmetic is fp32 (fp64) whatever the parameter and state dtypes.
        compile: ``torch.compile`` the step of each chunk of same-shape matrices (None:
            environment variable GWT_COMPILE, default ``auto`` = CUDA tensors only). The ptwt
            path always runs eagerly.
        cpu_kernel: step fp32 CPU tensors with the C kernels of gwt/csrc/ (the Haar closed form,
            any other wavelet with boundary ``zero``, plain Adam; None: environment variable
            GWT_CPU_KERNEL, default on).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, *, wavelet: str | None = "haar", level: int = 2,
                 alpha: float = 0.25, boundary: str = "zero", limiter: float | None = 1.01,
                 closed_form: bool = True, state_dtype=None, compile: bool | None = None,
                 cpu_kernel: bool | None = None):
        defaults = dict(GWT_DEFAULTS, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, wavelet=wavelet,
                        level=level, alpha=alpha, boundary=boundary, limiter=limiter, closed_form=closed_form)
        super().__init__(params, defaults, state_dtype=state_dtype, compile=compile)
        self._plans: dict = {}  # (row length, wavelet, level) -> cpu_kernel.DWTPlan
        self.use_cpu_kernel = cpu_kernel_enabled(cpu_kernel)
        self._kernel: bool | None = None  # C kernels loaded? (set at the first step that could use them)

    def _check_group(self, group: dict) -> None:
        group["betas"] = check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0)

    def _init_state(self, p: torch.Tensor, group: dict, state: dict) -> None:
        state["step"] = torch.tensor(0.0)
        shape = self.approx_shape(p, group) if group_is_gwt(group) else p.shape
        state["exp_avg"] = self._new_state_tensor(shape, p)
        state["exp_avg_sq"] = self._new_state_tensor(shape, p)
        if group_is_gwt(group) and group["limiter"] is not None:
            state["prev_norm"] = torch.full((), float("inf"), dtype=compute_dtype(p), device=p.device)

    def _fn(self, fn, device: torch.device):
        use = self.use_compile == "auto" and device.type == "cuda" or self.use_compile is True
        return compiled(fn) if use else fn

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        for group in self.param_groups:
            batches: dict[tuple, list] = {}
            for p, grad in self._params_with_grad(group):
                state = self.state[p]
                if not state:
                    self._init_state(p, group, state)
                t = self._increment_step(state)
                path = self._path(p, grad, state, group)
                if path == "general":
                    self._general(p, grad, state, group, t)
                else:  # batched: same-shape matrices together (plain Adam: any shapes)
                    shape = () if path == "cpu_adam" else tuple(p.shape)
                    batches.setdefault((path, t, shape, p.dtype, p.device), []).append((p, grad, state))
            for (path, t, *_), items in batches.items():
                if path == "cpu_kernel":
                    self._cpu_haar(items, group, t)
                elif path == "cpu_dwt":
                    self._cpu_dwt(items, group, t)
                elif path == "cpu_adam":
                    self._cpu_adam(items, group, t)
                else:
                    for start in range(0, len(items), GROUP_CHUNK):
                        self._run_batch(path, items[start:start + GROUP_CHUNK], group, t)
        return loss

    def _path(self, p, grad, state, group) -> str:
        kernel = self.use_cpu_kernel and cpu_kernel.applies(p, grad, state["exp_avg"], state["exp_avg_sq"]) \
            and self._kernel_built()
        if not group_is_gwt(group):
            return "cpu_adam" if kernel else "adam"
        if not (group["closed_form"] and is_haar_closed_form(group["wavelet"], group["boundary"], p.shape[-1],
                                                             group["level"])):
            if kernel and cpu_kernel.DWTPlan.supports(group["wavelet"], group["boundary"], group["level"]):
                return "cpu_dwt"
            return "general"
        return "cpu_kernel" if kernel else "haar"

    def _kernel_built(self) -> bool:
        """Whether the C kernels loaded (looked up once per optimizer)."""
        if self._kernel is None:
            self._kernel = cpu_kernel.library() is not None
        return self._kernel

    @staticmethod
    def _scalars(group, t: int):
        """Step size and decay as 0-d CPU tensors: inputs of the compiled graphs (a new learning
        rate never recompiles) that no device has to wait for."""
        beta1, beta2 = group["betas"]
        step_size = group["lr"] * bias_correction(t, beta1, beta2)
        decay = group["lr"] * group["weight_decay"]
        return torch.tensor(step_size, dtype=torch.float64), torch.tensor(decay, dtype=torch.float64)

    def _run_batch(self, path: str, items: list, group: dict, t: int) -> None:
        params, grads, states = zip(*items)
        step_size, decay = self._scalars(group, t)
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        if path == "adam":
            self._fn(adam_group, params[0].device)(list(params), list(grads), exp_avgs, exp_avg_sqs, step_size, decay, beta1, beta2,
                                 group["eps"])
            return
        use_limiter = group["limiter"] is not None
        prev_norms = [s["prev_norm"] for s in states] if use_limiter else exp_avgs  # unused without limiter
        self._fn(gwt_haar_group, params[0].device)(list(params), list(grads), exp_avgs, exp_avg_sqs, prev_norms, step_size, decay,
                                 beta1, beta2, group["eps"], group["alpha"], group["limiter"] or 1.0,
                                 group["level"], use_limiter)

    def _general(self, p, grad, state, group, t: int) -> None:
        use_limiter = group["limiter"] is not None
        step_size, decay = self._scalars(group, t)
        beta1, beta2 = group["betas"]
        gwt_general_step(p, grad, state["exp_avg"], state["exp_avg_sq"], state.get("prev_norm"), step_size, decay,
                         beta1, beta2, group["eps"], group["alpha"], group["limiter"] or 1.0, use_limiter,
                         self.transform_for(p, group))

    def _cpu_haar(self, items: list, group: dict, t: int) -> None:
        """Same-shape fp32 CPU matrices through the C kernel in one call (both passes and the
        limiter of each matrix)."""
        params, grads, states = zip(*items)
        beta1, beta2 = group["betas"]
        limiter = group["limiter"]
        cpu_kernel.haar_step(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             [s["prev_norm"] for s in states] if limiter is not None else None, group["level"],
                             beta1, beta2, group["eps"], group["lr"] * bias_correction(t, beta1, beta2) * group["alpha"],
                             limiter, group["lr"] * group["weight_decay"])

    def _cpu_adam(self, items: list, group: dict, t: int) -> None:
        params, grads, states = zip(*items)
        beta1, beta2 = group["betas"]
        cpu_kernel.adam_step(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             beta1, beta2, group["eps"], group["lr"] * bias_correction(t, beta1, beta2),
                             group["lr"] * group["weight_decay"])

    def _cpu_dwt(self, items: list, group: dict, t: int) -> None:
        """Any wavelet with boundary ``zero`` through the C kernel (fp32 CPU), same-shape matrices
        together: the multi-level transform of each row runs in per-thread scratch, two passes as
        for Haar."""
        params, grads, states = zip(*items)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        beta1, beta2 = group["betas"]
        key = (params[0].shape[-1], group["wavelet"], group["level"])
        if key not in self._plans:
            self._plans[key] = cpu_kernel.DWTPlan(*key)
        plan = self._plans[key]
        norms_sq = plan.step(grads, exp_avgs, exp_avg_sqs, beta1, beta2, group["eps"])
        step_size = group["lr"] * bias_correction(t, beta1, beta2)
        scales = [step_size * group["alpha"] / self._limit(s, group, nsq) for s, nsq in zip(states, norms_sq)]
        plan.apply(params, grads, exp_avgs, exp_avg_sqs, group["eps"], scales, group["lr"] * group["weight_decay"])

    @staticmethod
    def _limit(state, group, norm_sq: float) -> float:
        """The norm-growth limiter's lam from ||M / denom||^2 (1 without limiter); updates prev_norm."""
        if group["limiter"] is None:
            return 1.0
        norm = math.sqrt(norm_sq)
        lam = max(norm / (state["prev_norm"].item() + 1e-8), group["limiter"]) / group["limiter"]
        state["prev_norm"].fill_(norm / lam)
        return lam
