"""GWT-AdamW: Adam moments on the wavelet approximation of each gradient matrix.

The update rule is the released one (docs/GWT_MATH.md): moments of ``A_l`` only, denominator
``sqrt(V) + eps`` without bias-correcting V, the Fira norm-growth limiter on the compressed
update, details divided by the aligned denominator, inverse transform times ``alpha``, step size
``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``, decoupled weight decay applied after the update.
"""
from __future__ import annotations

import torch

from gwt.optim._common import (
    bias_correction,
    check_betas,
    check_range,
    compiled,
    compute_dtype,
    group_is_gwt,
    norm_growth_limit,
)
from gwt.optim.base import GWT_DEFAULTS, GWTOptimizerBase
from gwt.wavelets import haar_blocks, is_haar_closed_form

def _moments(a, exp_avg, exp_avg_sq, beta1: float, beta2: float, eps: float):
    """Adam moments of ``a`` in the compute dtype; returns (M, V, denom, M / denom)."""
    m_new = exp_avg.to(a.dtype) * beta1 + (1 - beta1) * a
    v_new = exp_avg_sq.to(a.dtype) * beta2 + (1 - beta2) * a * a
    denom = v_new.sqrt() + eps
    return m_new, v_new, denom, m_new / denom


def _write_back(param, new_param, decay: float, exp_avg, m_new, exp_avg_sq, v_new):
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


def gwt_haar_step(param, grad, exp_avg, exp_avg_sq, prev_norm, step_size: float, decay: float,
                  beta1: float, beta2: float, eps: float, alpha: float, gamma: float,
                  level: int, use_limiter: bool):
    """GWT-Haar through the closed form: cost and memory traffic independent of ``level``.

    update = alpha / lam * [2**(-l/2) * rep(N) + (G - rep(abar)) / rep(denom)], moments of
    A_l = 2**(l/2) * abar, abar the zero-padded block mean of G over blocks of 2**l.
    """
    rows, n = param.shape
    g3 = haar_blocks(grad.to(compute_dtype(param)), level)  # (m, k, B)
    abar = g3.mean(-1)  # (m, k)
    m_new, v_new, denom, normalized = _moments(abar * 2.0 ** (level / 2), exp_avg, exp_avg_sq,
                                               beta1, beta2, eps)
    coef = alpha / norm_growth_limit(normalized, prev_norm, gamma) if use_limiter else alpha
    update3 = (g3 - abar.unsqueeze(-1)) / denom.unsqueeze(-1) + normalized.unsqueeze(-1) * 2.0 ** (-level / 2)
    update = update3.reshape(rows, -1)[:, :n]  # (m, n)
    new_param = param.to(g3.dtype) - (step_size * coef) * update
    _write_back(param, new_param, decay, exp_avg, m_new, exp_avg_sq, v_new)


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
        compile: ``torch.compile`` the per-parameter step (None: environment variable
            GWT_COMPILE, default on). The ptwt path always runs eagerly.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, *, wavelet: str | None = "haar", level: int = 2,
                 alpha: float = 0.25, boundary: str = "zero", limiter: float | None = 1.01,
                 closed_form: bool = True, state_dtype=None, compile: bool | None = None):
        defaults = dict(GWT_DEFAULTS, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, wavelet=wavelet,
                        level=level, alpha=alpha, boundary=boundary, limiter=limiter, closed_form=closed_form)
        super().__init__(params, defaults, state_dtype=state_dtype, compile=compile)

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

    def _fn(self, fn):
        return compiled(fn) if self.use_compile else fn

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            gwt = group_is_gwt(group)
            for p, grad in self._params_with_grad(group):
                state = self.state[p]
                if not state:
                    self._init_state(p, group, state)
                t = self._increment_step(state)
                step_size = group["lr"] * bias_correction(t, beta1, beta2)
                decay = group["lr"] * group["weight_decay"]
                common = (step_size, decay, beta1, beta2, group["eps"])
                if not gwt:
                    self._fn(adam_step)(p, grad, state["exp_avg"], state["exp_avg_sq"], *common)
                    continue
                use_limiter = group["limiter"] is not None
                prev_norm = state.get("prev_norm", state["exp_avg"])  # unused when the limiter is off
                gamma = group["limiter"] if use_limiter else 1.0
                if group["closed_form"] and is_haar_closed_form(group["wavelet"], group["boundary"],
                                                                p.shape[-1], group["level"]):
                    self._fn(gwt_haar_step)(p, grad, state["exp_avg"], state["exp_avg_sq"], prev_norm, *common,
                                            group["alpha"], gamma, group["level"], use_limiter)
                else:
                    gwt_general_step(p, grad, state["exp_avg"], state["exp_avg_sq"], prev_norm, *common,
                                     group["alpha"], gamma, use_limiter, self.transform_for(p, group))
        return loss
