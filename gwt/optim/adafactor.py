"""GWT-Adafactor: Adafactor's factored second moment on the wavelet approximation.

For a GWT matrix with approximation ``A`` (m, k):

1. ``beta2_t = 1 - t**decay_rate``; row and column statistics of ``A**2 + eps1``:
   ``r = beta2_t * r + (1 - beta2_t) * mean_k(A**2 + eps1)`` (m), ``c`` likewise over rows (k).
2. ``S = sqrt(outer(r, c) / mean(r))`` (m, k), the factored RMS estimate.
3. ``U = A / S``; RMS clip ``d = max(1, RMS(U) / clip_threshold)``; ``U = U / d``.
4. Optional first moment (``beta1``): ``M = beta1 * M + (1 - beta1) * U``; ``U = M``.
5. Optional norm-growth limiter (``limiter`` gamma, off by default) on ``U``, factor ``lam``.
6. Details: with ``detail_scaling="second_moment"`` (default) every detail coefficient is divided
   by ``S * d * lam`` aligned to its position (as GWT-AdamW divides them by its denominator);
   with ``"none"`` they are divided by ``d * lam`` only (the released variant's treatment).
7. ``W -= lr * alpha * inverse([U / lam, details])``, then ``W -= lr * weight_decay * W``.

Non-GWT parameters (level 0) get the same Adafactor without transform or alpha: factored for
matrices, a full second moment for vectors.
"""
from __future__ import annotations

import math

import torch

from gwt.optim._common import check_range, compute_dtype, group_is_gwt, limiter_factor, norm_growth_limit
from gwt.optim import distributed
from gwt.optim.base import GWT_DEFAULTS, GWTOptimizerBase

DETAIL_SCALINGS = ("second_moment", "none")


class GWTAdafactor(GWTOptimizerBase):
    """Adafactor (explicit lr, no relative step) with GWT on the targeted matrices.

    Args beyond :class:`gwt.GWTAdamW`'s GWT keys: ``beta1`` (None: no first moment),
    ``decay_rate`` (-0.8), ``eps1`` (1e-30), ``clip_threshold`` (1.0), ``detail_scaling``.
    The limiter defaults to off (None) here. ``backend``: ``"auto"`` or ``"torch"`` (torch ops
    only; the whole step can be compiled from outside with ``torch.compile``).

    DTensor parameters (FSDP2): row and second-moment states are split by rows as the parameter,
    column statistics are replicated; the sums over rows (column statistics and row mean, the RMS
    clip, the limiter's norm) of all parameters are reduced together, at most three all-reduces
    per step.
    """

    REPLICATED_STATES = ("col",)

    GROUP_KEYS = ("lr", "weight_decay", "beta1", "decay_rate", "eps1", "clip_threshold", "detail_scaling")

    def __init__(self, params, lr: float = 1e-2, *, beta1: float | None = None, decay_rate: float = -0.8,
                 eps1: float = 1e-30, clip_threshold: float = 1.0, weight_decay: float = 0.0,
                 wavelet: str | None = "haar", level: int = 2, alpha: float = 0.25, boundary: str = "zero",
                 limiter: float | None = None, detail_scaling: str = "second_moment", state_dtype=None,
                 backend: str | None = "auto"):
        defaults = dict(GWT_DEFAULTS, lr=lr, beta1=beta1, decay_rate=decay_rate, eps1=eps1,
                        clip_threshold=clip_threshold, weight_decay=weight_decay, wavelet=wavelet, level=level,
                        alpha=alpha, boundary=boundary, limiter=limiter, detail_scaling=detail_scaling)
        super().__init__(params, defaults, state_dtype=state_dtype, backend=backend)

    def _check_group(self, group: dict) -> None:
        if group["beta1"] is not None:
            check_range("beta1", group["beta1"], 0.0, 1.0)
        check_range("decay_rate", group["decay_rate"], -1.0, 0.0, high_open=False)
        check_range("eps1", group["eps1"], 0.0)
        check_range("clip_threshold", group["clip_threshold"], 0.0, low_open=True)
        if group["detail_scaling"] not in DETAIL_SCALINGS:
            raise ValueError(f"detail_scaling={group['detail_scaling']!r}; valid: {', '.join(DETAIL_SCALINGS)}")

    def _init_state(self, p, group, state):
        state["step"] = torch.tensor(0.0)
        shape = self.approx_shape(p, group) if group_is_gwt(group) else tuple(p.shape)
        if len(shape) >= 2:
            state["row"] = self._new_state_tensor(shape[:-1], p)
            state["col"] = self._new_state_tensor(shape[:-2] + shape[-1:], p, replicate=True)
        else:
            state["sq"] = self._new_state_tensor(shape, p)
        if group["beta1"] is not None:
            state["exp_avg"] = self._new_state_tensor(shape, p)
        if group_is_gwt(group) and group["limiter"] is not None:
            state["prev_norm"] = torch.full((), float("inf"), dtype=compute_dtype(p), device=p.device)

    @staticmethod
    def _rms(x):
        return x.pow(2).mean().sqrt()

    def _precondition(self, a, state, group, beta2_t):
        """Returns (clipped normalized update U, RMS estimate S, clip factor d)."""
        sq = a * a + group["eps1"]
        if "row" in state:
            row = state["row"].to(a.dtype).mul(beta2_t) + sq.mean(-1) * (1 - beta2_t)
            col = state["col"].to(a.dtype).mul(beta2_t) + sq.mean(-2) * (1 - beta2_t)
            state["row"].copy_(row)
            state["col"].copy_(col)
            scale = (row / row.mean(-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)
        else:
            scale = state["sq"].to(a.dtype).mul(beta2_t) + sq * (1 - beta2_t)
            state["sq"].copy_(scale)
        scale = scale.sqrt()
        update = a / scale
        clip = torch.clamp(self._rms(update) / group["clip_threshold"], min=1.0)
        return update / clip, scale, clip

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        sharded = []
        for group in self.param_groups:
            for p, grad, state in self._params_with_state(group):
                t = self._increment_step(state)
                if p.numel() == 0:
                    continue  # nothing to update
                if distributed.is_dtensor(p):
                    sharded.append((self._sharded_param_step(p, grad, state, group, t), distributed.reduce_group(p)))
                    continue
                beta2_t = 1.0 - t ** group["decay_rate"]
                g = grad.to(compute_dtype(p))
                gwt = group_is_gwt(group)
                transform = self.transform_for(p, group) if gwt else None
                a, ctx = transform.analyze(g) if gwt else (g, None)
                update, scale, clip = self._precondition(a, state, group, beta2_t)
                if group["beta1"] is not None:
                    exp_avg = state["exp_avg"].to(a.dtype).mul(group["beta1"]).add(update, alpha=1 - group["beta1"])
                    state["exp_avg"].copy_(exp_avg)
                    update = exp_avg
                if gwt:
                    divisor = clip
                    if group["limiter"] is not None:
                        lam = norm_growth_limit(update, state["prev_norm"], group["limiter"])
                        update, divisor = update / lam, divisor * lam
                    detail_div = scale * divisor if group["detail_scaling"] == "second_moment" else divisor
                    update = group["alpha"] * transform.synthesize(update, ctx, detail_div)
                new_param = p.to(g.dtype) - group["lr"] * update
                new_param = new_param - group["lr"] * group["weight_decay"] * new_param
                p.copy_(new_param)
        if sharded:
            distributed.drive(sharded)
        return loss

    def _sharded_param_step(self, param, grad, state, group, t):
        """The step of one DTensor parameter on its local rows, as a generator: it yields the local
        partial sums over rows it needs (1-D tensors) and receives their global sums
        (:func:`gwt.optim.distributed.drive`); every rank yields the same sequence, empty shards too."""
        p = param.to_local()
        st = {key: distributed.local(value) for key, value in state.items()}
        rows = param.shape[0] if param.dim() else 1  # global rows
        beta2_t = 1.0 - t ** group["decay_rate"]
        g = distributed.local_grad(param, grad).to(compute_dtype(p))
        gwt = group_is_gwt(group)
        transform = self.transform_for(param, group) if gwt else None
        if gwt and p.shape[0] == 0:
            a, ctx = g.new_zeros(self.approx_shape(p, group)), None
        else:
            a, ctx = transform.analyze(g) if gwt else (g, None)
        sq = a * a + group["eps1"]
        if "row" in st:
            row = st["row"].to(a.dtype).mul(beta2_t) + sq.mean(-1) * (1 - beta2_t)
            sums = yield torch.cat([sq.sum(-2), row.sum(-1, keepdim=True)])
            k = a.shape[-1]
            col = st["col"].to(a.dtype).mul(beta2_t) + (sums[:k] / rows).to(a.dtype) * (1 - beta2_t)
            st["row"].copy_(row)
            st["col"].copy_(col)
            scale = (row / (sums[k] / rows).to(a.dtype)).unsqueeze(-1) * col.unsqueeze(-2)
        else:
            scale = st["sq"].to(a.dtype).mul(beta2_t) + sq * (1 - beta2_t)
            st["sq"].copy_(scale)
        scale = scale.sqrt()
        update = a / scale
        total = yield update.pow(2).sum().reshape(1)
        count = math.prod(self.approx_shape(param, group)) if gwt else param.numel()  # global entries
        clip = torch.clamp((total[0] / count).sqrt() / group["clip_threshold"], min=1.0).to(a.dtype)
        update = update / clip
        if group["beta1"] is not None:
            exp_avg = st["exp_avg"].to(a.dtype).mul(group["beta1"]).add(update, alpha=1 - group["beta1"])
            st["exp_avg"].copy_(exp_avg)
            update = exp_avg
        if gwt:
            divisor = clip
            if group["limiter"] is not None:
                norm_sq = yield torch.linalg.vector_norm(update, dtype=torch.float64).square().reshape(1)
                prev_norm = st["prev_norm"]
                norm = norm_sq[0].sqrt()
                lam = limiter_factor(norm, prev_norm, group["limiter"])
                prev_norm.copy_(norm / lam)
                lam = lam.to(a.dtype)
                update, divisor = update / lam, divisor * lam
            if p.shape[0] == 0:
                return
            detail_div = scale * divisor if group["detail_scaling"] == "second_moment" else divisor
            update = group["alpha"] * transform.synthesize(update, ctx, detail_div)
        new_param = p.to(g.dtype) - group["lr"] * update
        new_param = new_param - group["lr"] * group["weight_decay"] * new_param
        p.copy_(new_param)
