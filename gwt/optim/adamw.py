"""GWT-AdamW: Adam moments on the wavelet approximation of each gradient matrix.

The update rule is the released one (docs/update_rule.md): moments of ``A_l`` only, denominator
``sqrt(V) + eps`` without bias-correcting V, the Fira norm-growth limiter on the compressed
update, details divided by the aligned denominator, inverse transform times ``alpha``, step size
``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``, decoupled weight decay applied after the update.
"""
from __future__ import annotations

import os

import torch

from gwt.optim._common import (
    check_betas,
    check_range,
    compiled,
    compute_dtype,
    group_is_gwt,
    limiter_factor,
    norm_growth_limit,
    resolve_backend,
    step_scalars,
)
from gwt.optim import cpu_kernel, distributed
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
                      alpha: float, gamma: float | None, level: int):
    """Pass 1 of GWT-Haar (closed form): moments, limiter and the per-block affine map.

    With abar the zero-padded block mean of G over blocks of B = 2**l, the moments are of
    A_l = 2**(l/2) * abar and the update of every entry of block j is
    ``offset_j + slope_j * G`` with ``slope = 1 / denom`` and
    ``offset = 2**(-l/2) * N - abar / denom`` (docs/update_rule.md, "The Haar closed form").
    Updates the moments; returns (offset, slope, scale) with ``scale = step_size * alpha / lam``
    (``prev_norm`` None: no limiter). Reads G once; the cost does not depend on the level.
    """
    offset, slope, normalized = haar_moments(grad, exp_avg, exp_avg_sq, beta1, beta2, eps, level)
    scale = step_size * alpha
    if prev_norm is not None:
        scale = scale / norm_growth_limit(normalized, prev_norm, gamma)
    return offset, slope, scale


def haar_moments(grad, exp_avg, exp_avg_sq, beta1: float, beta2: float, eps: float, level: int):
    """The moments of GWT-Haar (in place) and the per-block map: returns (offset, slope, N) with
    ``N = M / denom`` the compressed update before the limiter."""
    g3 = haar_blocks(grad.to(compute_dtype(grad)), level)  # (m, k, B)
    abar = g3.mean(-1)  # (m, k)
    m_new, v_new, denom, normalized = _moments(abar * 2.0 ** (level / 2), exp_avg, exp_avg_sq,
                                               beta1, beta2, eps)
    exp_avg.copy_(m_new)
    exp_avg_sq.copy_(v_new)
    slope = 1.0 / denom
    offset = normalized * 2.0 ** (-level / 2) - abar * slope
    return offset, slope, normalized


def haar_apply(param, grad, offset, slope, scale, decay, level: int):
    """Pass 2 of GWT-Haar: ``W = (W - scale * (offset + slope * G)) * (1 - lr * wd)`` blockwise."""
    rows, n = param.shape
    g3 = haar_blocks(grad.to(offset.dtype), level)  # (m, k, B)
    update = (offset.unsqueeze(-1) + slope.unsqueeze(-1) * g3).reshape(rows, g3.shape[1] * g3.shape[2])[:, :n]
    new_param = param.to(offset.dtype) - scale * update
    param.copy_(new_param - decay * new_param)


def gwt_haar_group(params, grads, exp_avgs, exp_avg_sqs, prev_norms, step_size, decay, beta1: float,
                   beta2: float, eps: float, alpha: float, gamma: float | None, level: int):
    """GWT-Haar for a list of same-shape matrices: one compiled graph, one Python call
    (``prev_norms`` None: no limiter)."""
    for i, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        offset, slope, scale = haar_coefficients(grad, exp_avg, exp_avg_sq, None if prev_norms is None else
                                                 prev_norms[i], step_size, beta1, beta2, eps, alpha, gamma, level)
        haar_apply(param, grad, offset, slope, scale, decay, level)


def adam_group(params, grads, exp_avgs, exp_avg_sqs, step_size, decay, beta1: float, beta2: float, eps: float):
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        adam_step(param, grad, exp_avg, exp_avg_sq, step_size, decay, beta1, beta2, eps)


def gwt_general_step(param, grad, exp_avg, exp_avg_sq, prev_norm, step_size, decay, beta1: float, beta2: float,
                     eps: float, alpha: float, gamma: float | None, transform):
    """GWT with any pywt wavelet: multi-level transform through ptwt (eager; ``prev_norm`` None:
    no limiter)."""
    g = grad.to(compute_dtype(param))
    approx, ctx = transform.analyze(g)
    m_new, v_new, denom, normalized = _moments(approx, exp_avg, exp_avg_sq, beta1, beta2, eps)
    if prev_norm is not None:
        lam = norm_growth_limit(normalized, prev_norm, gamma)
        normalized, denom = normalized / lam, denom * lam
    update = transform.synthesize(normalized, ctx, denom)
    new_param = param.to(g.dtype) - (step_size * alpha) * update
    _write_back(param, new_param, decay, exp_avg, m_new, exp_avg_sq, v_new)


class _Scalars:
    """The step scalars of one group at one step, computed once: floats for the C kernels, 0-d
    fp64 CPU tensors for the torch graphs (a new learning rate never recompiles them, and no
    device waits for them), 0-d fp32 device tensors for Triton."""

    __slots__ = ("step_size", "decay", "_cpu", "_device")

    def __init__(self, group: dict, t: int):
        self.step_size, self.decay = step_scalars(group, t)
        self._cpu = self._device = None

    def cpu_tensors(self):
        if self._cpu is None:
            self._cpu = (torch.tensor(self.step_size, dtype=torch.float64), torch.tensor(self.decay, dtype=torch.float64))
        return self._cpu

    def device_tensors(self, device: torch.device):
        if self._device is None or self._device[0].device != device:
            values = torch.tensor([self.step_size, self.decay], dtype=torch.float32).to(device, non_blocking=True)
            self._device = tuple(values.unbind())
        return self._device


class _DeviceScalars:
    """The step scalars of one batch under ``capturable=True``, computed on the device from the
    batch's per-parameter step counters (already incremented) and the group's lr (a number, or a
    one-element tensor on the device): one fp32 step size per parameter and one decay. In fp64,
    as the host computes them; no value crosses to or from the host."""

    __slots__ = ("group", "steps")

    def __init__(self, group: dict, steps: list):
        self.group, self.steps = group, steps

    def device_tensors(self, device: torch.device):
        beta1, beta2 = self.group["betas"]
        t = torch.stack(self.steps).to(torch.float64)
        correction = torch.sqrt(1.0 - torch.pow(beta2, t)) / (1.0 - torch.pow(beta1, t))
        lr, wd = self.group["lr"], self.group["weight_decay"]
        if isinstance(lr, torch.Tensor):
            lr = lr.reshape(()).to(torch.float64)
            decay = (lr * wd).to(torch.float32)
        else:
            decay = torch.full((), lr * wd, dtype=torch.float32, device=device)
        return (correction * lr).to(torch.float32), decay


#: What each backend runs for each kind of parameter: ``haar`` (Haar closed form), ``dwt`` (any
#: other wavelet, or Haar where the closed form does not apply) and ``adam`` (level-0 groups).
#: Values name methods of GWTAdamW taking ``(items, group, scalars)``; ``_ptwt`` is the general
#: transform through ptwt, the only path for boundaries other than ``zero``.
STEPS: dict[str, dict[str, str]] = {
    "torch": {"haar": "_torch_haar", "dwt": "_ptwt", "adam": "_torch_adam"},
    "compile": {"haar": "_compiled_haar", "dwt": "_ptwt", "adam": "_compiled_adam"},
    "cpu": {"haar": "_cpu_haar", "dwt": "_cpu_dwt", "adam": "_cpu_adam"},
    "triton": {"haar": "_triton_haar", "dwt": "_triton_dwt", "adam": "_triton_adam"},
}

_KERNEL_DTYPES = {"cpu": (torch.float32,), "triton": (torch.float32, torch.bfloat16)}


def _triton():
    from gwt.optim import triton_kernels

    return triton_kernels


def triton_available() -> bool:
    try:
        return bool(_triton().available())
    except ImportError:
        return False


class _Route:
    """How one parameter is stepped: its kind, backend, step method and batching."""

    __slots__ = ("kind", "backend", "method", "kernel", "any_shape", "chunk")

    def __init__(self, kind: str, backend: str):
        self.kind, self.backend, self.method = kind, backend, STEPS[backend][kind]
        self.kernel = backend in _KERNEL_DTYPES and self.method != "_ptwt"  # checks the gradient each step
        self.any_shape = kind == "adam" and backend in ("cpu", "triton")  # one call for every shape
        self.chunk = GROUP_CHUNK if backend in ("torch", "compile") else None


class GWTAdamW(GWTOptimizerBase):
    """Adam(W) whose moments live on the level-``level`` wavelet approximation of each gradient.

    Args:
        params: parameters or groups (see :func:`gwt.gwt_param_groups`). Group keys override the
            defaults below; a group with ``level=0`` or ``wavelet=None`` is plain Adam(W).
        lr, betas, eps, weight_decay: as in AdamW, with the released eps convention
            (``sqrt(V) + eps`` and the bias correction folded into the step size; default eps
            1e-6; eps must be > 0).
        wavelet: any pywt discrete wavelet name (``haar``, ``db2``, ``sym4``, ``coif1``, ...).
        level: transform depth (int >= 1; 0 = plain Adam). States are about 1/2**level the size.
        alpha: scale of the reconstructed update (0.25 in the paper's pre-training).
        boundary: signal extension mode of the transform (``zero`` as released).
        limiter: norm-growth limiter threshold gamma (1.01); None disables it.
        state_dtype: None (fp32, fp64 for fp64 parameters), ``"float32"`` or ``"bfloat16"``.
            Arithmetic is fp32 (fp64) whatever the parameter and state dtypes.
        capturable: keep each parameter's step count on its device and compute the step scalars
            there, so ``step()`` never synchronises with the host and can be captured in a CUDA
            graph (after warm-up steps that build the kernels and their address tables). Needs
            the ``triton`` backend for every parameter (``auto`` picks it on CUDA), no DTensor
            parameters, and gradients laid out as their parameters. ``lr`` may then be a
            one-element tensor on the parameters' device: a graph reads it at each replay (torch's
            learning-rate schedulers update tensor lrs in place); a Python number is fixed at capture.
        backend: which code runs the step (table :data:`STEPS`): ``"auto"`` (default; None reads
            the environment variable GWT_BACKEND), ``"torch"`` (eager torch ops; ptwt for
            wavelets other than Haar), ``"compile"`` (the torch ops through ``torch.compile``),
            ``"cpu"`` (C kernels of gwt/csrc/ for contiguous fp32 CPU tensors with fp32 states),
            ``"triton"`` (Triton kernels, CUDA). ``auto`` picks per parameter: ``cpu`` for fp32
            CPU tensors when the kernels build (else a warning and ``torch``), ``triton`` on CUDA
            when triton is importable, else ``compile`` on CUDA, else ``torch``. With ``cpu`` or
            ``triton``, wavelets with a boundary other than ``zero`` run through ptwt, and
            tensors outside the kernels' dtypes or layout take the ``torch`` code.

    DTensor parameters (FSDP2's row sharding, or replicated) step on each rank's local rows, with
    states laid out as their parameter; the limiter's norms of all sharded matrices cost one
    all-reduce per step (:meth:`_sharded_step`, gwt/optim/distributed.py).
    """

    BACKENDS = tuple(["auto", *STEPS])
    GROUP_KEYS = ("lr", "weight_decay", "betas", "eps")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, *, wavelet: str | None = "haar", level: int = 2,
                 alpha: float = 0.25, boundary: str = "zero", limiter: float | None = 1.01,
                 state_dtype=None, backend: str | None = "auto", capturable: bool = False, compile=None):
        if not isinstance(capturable, bool):
            raise ValueError(f"capturable={capturable!r}; valid: True or False")
        self.capturable = capturable  # read by the group checks below
        if capturable and resolve_backend(backend) not in ("auto", "triton"):
            raise ValueError(f"capturable=True needs backend='triton' (or 'auto' on CUDA), not "
                             f"backend={resolve_backend(backend)!r}; valid: capturable=False with that backend")
        if compile is not None:
            raise ValueError(f"compile={compile!r} is not an option of GWTAdamW; valid: backend='compile' "
                             f"(or {', '.join(map(repr, self.BACKENDS))})")
        defaults = dict(GWT_DEFAULTS, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, wavelet=wavelet,
                        level=level, alpha=alpha, boundary=boundary, limiter=limiter)
        super().__init__(params, defaults, state_dtype=state_dtype, backend=backend)

    def _reset_caches(self) -> None:
        self._routes: dict = {}  # parameter -> _Route

    def __getstate__(self):
        return dict(super().__getstate__(), capturable=self.capturable)

    def __setstate__(self, state):
        # also called by torch's load_state_dict with the groups and states only: keep the flag
        state.setdefault("capturable", self.__dict__.get("capturable", False))
        super().__setstate__(state)

    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`GWTOptimizerBase.load_state_dict`; with ``capturable=True`` a tensor lr of a
        saved group is moved to its parameters' device (a state dict loaded onto the CPU)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if self.capturable and isinstance(groups, list) and len(groups) == len(self.param_groups):
            moved = []
            for saved, group in zip(groups, self.param_groups):
                lr = saved.get("lr") if isinstance(saved, dict) else None
                if isinstance(lr, torch.Tensor) and group["params"]:
                    saved = dict(saved, lr=lr.to(group["params"][0].device))
                moved.append(saved)
            state_dict = dict(state_dict, param_groups=moved)
        super().load_state_dict(state_dict)

    def _check_lr(self, lr) -> None:
        if isinstance(lr, torch.Tensor) and getattr(self, "capturable", False):
            if lr.numel() != 1 or not lr.is_floating_point() or lr.requires_grad:
                raise ValueError(f"lr={lr!r}: a tensor lr must hold one floating-point value (no grad); "
                                 "valid: a Python number, or a one-element float tensor with capturable=True")
            check_range("lr", float(lr), 0.0)  # read once here, never in step()
            return
        if isinstance(lr, torch.Tensor):
            raise ValueError(f"lr={lr!r} is a tensor; valid: a Python number, or capturable=True (whose graphs "
                             "read a tensor lr at each replay)")
        check_range("lr", lr, 0.0)

    def _check_group(self, group: dict) -> None:
        group["betas"] = check_betas(group["betas"])
        lr = group["lr"]
        if self.capturable and isinstance(lr, torch.Tensor):  # (_check_lr refuses a tensor lr otherwise)
            for i, p in enumerate(group["params"]):
                if p.device != lr.device:
                    raise ValueError(f"lr is a tensor on {lr.device} but parameter "
                                     f"{self.param_name(group, i, len(self.param_groups) - 1)} is on {p.device}; "
                                     "valid: the lr tensor on the parameters' device")
        if self.capturable and os.environ.get("TRITON_INTERPRET", "0") != "1":
            for i, p in enumerate(group["params"]):
                if p.device.type != "cuda":
                    raise ValueError(f"capturable=True but parameter {self.param_name(group, i, len(self.param_groups) - 1)}"
                                     f" is on {p.device}; valid: CUDA tensors, or capturable=False")
        check_range("eps", group["eps"], 0.0, low_open=True)
        if self.backend == "cpu":
            if cpu_kernel.library() is None:
                raise RuntimeError(f"backend='cpu': the C kernels could not be built ({cpu_kernel.failure()}); "
                                   "valid: backend='auto' or 'torch'")
            for i, p in enumerate(group["params"]):
                if p.device.type != "cpu":
                    raise ValueError(f"backend='cpu' but parameter {self.param_name(group, i, len(self.param_groups) - 1)}"
                                     f" is on {p.device}; valid: CPU tensors, or backend='auto'")
        elif (self.backend == "triton" or self.capturable) and not triton_available():
            what = "capturable=True" if self.capturable else "backend='triton'"
            raise RuntimeError(f"{what} needs triton and a CUDA device (or TRITON_INTERPRET=1); valid here: "
                               "capturable=False with backend='auto', 'torch', 'compile' or 'cpu'")

    def _init_state(self, p: torch.Tensor, group: dict, state: dict) -> None:
        state["step"] = torch.tensor(0.0, device=p.device if self.capturable else None)
        shape = self.approx_shape(p, group) if group_is_gwt(group) else p.shape
        state["exp_avg"] = self._new_state_tensor(shape, p)
        state["exp_avg_sq"] = self._new_state_tensor(shape, p)
        if group_is_gwt(group) and group["limiter"] is not None:
            state["prev_norm"] = torch.full((), float("inf"), dtype=compute_dtype(p), device=p.device)

    # -- which code steps a parameter --------------------------------------------------------

    @staticmethod
    def _kind(p: torch.Tensor, group: dict) -> str:
        if not group_is_gwt(group):
            return "adam"
        return "haar" if is_haar_closed_form(group["wavelet"], group["boundary"], p.shape[-1], group["level"]) \
            else "dwt"

    def _fits(self, backend: str, p: torch.Tensor, group: dict, kind: str) -> bool:
        """Whether ``backend``'s kernels take this parameter and its states."""
        dtypes = _KERNEL_DTYPES.get(backend)
        if dtypes is None:
            return True
        state_dtype = self.state_dtype or compute_dtype(p)
        if p.dtype not in dtypes or state_dtype not in dtypes or not p.is_contiguous():
            return False
        if backend == "cpu" and (p.device.type != "cpu" or cpu_kernel.library() is None):
            return False
        if kind == "dwt" and not cpu_kernel.DWTPlan.supports(group["wavelet"], group["boundary"], group["level"]):
            return False  # ptwt: the torch entry of the table
        return True

    def _route(self, p: torch.Tensor, group: dict, p_local: torch.Tensor | None = None) -> _Route:
        """The route of ``p``: its kind from its (global) shape; for a DTensor parameter the
        backend from its local tensor ``p_local`` (what the code runs on)."""
        kind = self._kind(p, group)
        key, p = p, (p if p_local is None else p_local)
        backend = self.backend
        if backend == "auto" and self.capturable:
            backend = "triton"
        if backend == "auto":
            if p.device.type == "cpu" and self._fits("cpu", p, group, "adam"):
                backend = "cpu"
            elif p.device.type == "cuda":
                backend = "triton" if triton_available() and self._fits("triton", p, group, "adam") else "compile"
            else:
                backend = "torch"
        if not self._fits(backend, p, group, kind):
            backend = "torch"
        route = self._routes[key] = _Route(kind, backend)
        return route

    def step_backends(self) -> dict[str, int]:
        """How many parameters each ``kind@backend`` steps (after the first step; for reports)."""
        counts: dict[str, int] = {}
        for route in self._routes.values():
            name = f"{route.kind}@{route.backend if route.method != '_ptwt' else 'ptwt'}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    # -- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        if self.capturable:
            self._device_step()
            return loss
        routes = self._routes
        sharded = []
        for group in self.param_groups:
            batches: dict[tuple, list] = {}
            for p, grad, state in self._params_with_state(group):
                t = self._increment_step(state)
                if p.numel() == 0:
                    continue  # nothing to update, on every backend
                if distributed.is_dtensor(p):
                    sharded.append((group, p, grad, state, t))
                    continue
                route = routes.get(p) or self._route(p, group)
                if route.kernel and not (grad.dtype == p.dtype and grad.device == p.device and grad.is_contiguous()):
                    route = _Route(route.kind, "torch")  # this gradient only
                shape = () if route.any_shape else p.shape
                batches.setdefault((route.method, t, shape, p.dtype, p.device), []).append((p, grad, state))
            scalars: dict[int, _Scalars] = {}
            for (method, t, *_), items in batches.items():
                if t not in scalars:
                    scalars[t] = _Scalars(group, t)
                getattr(self, method)(items, group, scalars[t])
        if sharded:
            self._sharded_step(sharded)
        return loss

    def _where(self, group: dict, p: torch.Tensor) -> str:
        index = next(i for i, q in enumerate(group["params"]) if q is p)
        return self.param_name(group, index, next(g for g, x in enumerate(self.param_groups) if x is group))

    def _device_step(self) -> None:
        """``capturable=True``: the step counts live on the device and are incremented there, one
        call per batch; every batch runs on the Triton kernels with per-parameter step sizes
        (:class:`_DeviceScalars`). Nothing here reads a device value on the host."""
        for group in self.param_groups:
            batches: dict[tuple, list] = {}
            for p, grad, state in self._params_with_state(group):
                if p.numel() == 0:
                    state["step"].add_(1.0)
                    continue
                if distributed.is_dtensor(p):
                    raise RuntimeError(f"capturable=True does not step DTensor parameters (parameter "
                                       f"{self._where(group, p)}); valid: capturable=False")
                route = self._routes.get(p) or self._route(p, group)
                if route.backend != "triton" or route.method == "_ptwt":
                    raise RuntimeError(f"capturable=True needs the triton backend, but parameter {self._where(group, p)} "
                                       f"({p.dtype} on {p.device}, boundary={group['boundary']!r}) would step on "
                                       f"{'ptwt' if route.method == '_ptwt' else route.backend}; valid: CUDA tensors "
                                       "of fp32/bf16 (boundary 'zero' for GWT groups), or capturable=False")
                if not (grad.dtype == p.dtype and grad.device == p.device and grad.is_contiguous()):
                    raise RuntimeError(f"capturable=True: the gradient of parameter {self._where(group, p)} is "
                                       f"{grad.dtype} on "
                                       f"{grad.device} (contiguous={grad.is_contiguous()}); valid: contiguous, with "
                                       "its parameter's dtype and device")
                shape = () if route.any_shape else p.shape
                batches.setdefault((route.method, shape, p.dtype, p.device), []).append((p, grad, state))
            for (method, *_), items in batches.items():
                steps = [state["step"] for _, _, state in items]
                torch._foreach_add_(steps, 1.0)
                getattr(self, method)(items, group, _DeviceScalars(group, steps))

    # -- DTensor parameters (gwt/optim/distributed.py) ----------------------------------------

    def _sharded_step(self, entries) -> None:
        """Step DTensor parameters on each rank's local rows. Without the limiter (and for level-0
        groups) the ordinary batched code of :data:`STEPS` runs on the local tensors. Matrices with
        the limiter run pass 1 (moments and the local squared norm of the compressed update), one
        all-reduce of all those norms together, then pass 2 (limiter and update): on the ``cpu``
        backend through the C kernels of the general transform (also for Haar, whose closed form
        it equals), on every other backend through the eager torch code."""
        scalars: dict[tuple, _Scalars] = {}

        def scalars_for(group, t):
            key = (id(group), t)
            if key not in scalars:
                scalars[key] = _Scalars(group, t)
            return scalars[key]

        batches: dict[tuple, tuple] = {}
        limited = []
        for group, p, grad, state, t in entries:
            p_local, g_local = p.to_local(), distributed.local_grad(p, grad)
            local_state = {key: distributed.local(value) for key, value in state.items()}
            route = self._routes.get(p) or self._route(p, group, p_local)
            if route.kernel and not (g_local.dtype == p_local.dtype and g_local.device == p_local.device
                                     and g_local.is_contiguous()):
                route = _Route(route.kind, "torch")  # this gradient only
            if route.kind != "adam" and group["limiter"] is not None:
                limited.append((group, route, p_local, g_local, local_state, t, distributed.reduce_group(p)))
            elif p_local.numel():
                shape = () if route.any_shape else p_local.shape
                key = (id(group), route.method, t, shape, p_local.dtype, p_local.device)
                batches.setdefault(key, (group, []))[1].append((p_local, g_local, local_state))
        for (_, method, t, *_), (group, items) in batches.items():
            getattr(self, method)(items, group, scalars_for(group, t))
        if limited:
            self._limited_two_pass(limited, scalars_for)

    def _limited_two_pass(self, limited, scalars_for) -> None:
        """Pass 1 of every limited sharded matrix, one all-reduce of their local squared norms,
        pass 2. On the C kernels, same-shape local matrices of a group share one call per pass."""
        norms_sq: list = [None] * len(limited)
        passes: list = [None] * len(limited)
        kernel_batches: dict[tuple, list[int]] = {}
        for i, (group, route, p, g, state, t, _) in enumerate(limited):
            beta1, beta2 = group["betas"]
            eps, level = group["eps"], group["level"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            if p.shape[0] == 0:  # no rows here: joins the all-reduce with zero
                norms_sq[i] = torch.zeros(1, dtype=torch.float64, device=p.device)
            elif route.backend == "cpu" and route.method != "_ptwt":
                wavelet = group["wavelet"] if route.kind == "dwt" else "haar"  # Haar: its closed form's equal
                kernel_batches.setdefault((id(group), wavelet, tuple(p.shape)), []).append(i)
            elif route.kind == "haar":
                offset, slope, normalized = haar_moments(g, exp_avg, exp_avg_sq, beta1, beta2, eps, level)
                norms_sq[i] = torch.linalg.vector_norm(normalized, dtype=torch.float64).square().reshape(1)
                passes[i] = ("haar", offset, slope)
            else:
                transform = self.transform_for(p, group)  # rows are whole: the row length is global
                approx, ctx = transform.analyze(g.to(compute_dtype(p)))
                m_new, v_new, denom, normalized = _moments(approx, exp_avg, exp_avg_sq, beta1, beta2, eps)
                exp_avg.copy_(m_new)
                exp_avg_sq.copy_(v_new)
                norms_sq[i] = torch.linalg.vector_norm(normalized, dtype=torch.float64).square().reshape(1)
                passes[i] = ("dwt", transform, ctx, denom, normalized)
        kernel_args = {}
        for key, indices in kernel_batches.items():
            group = limited[indices[0]][0]
            beta1, beta2 = group["betas"]
            args = [[limited[i][k] for i in indices] for k in (2, 3)]  # params, grads
            args += [[limited[i][4][name] for i in indices] for name in ("exp_avg", "exp_avg_sq")]
            kernel_args[key] = args
            batch_norms = cpu_kernel.dwt_pass1(*args[1:], key[1], group["level"], beta1, beta2, group["eps"])
            for j, i in enumerate(indices):
                norms_sq[i] = batch_norms[j:j + 1]
        totals = distributed.all_reduce_sums([(entry[6], norm_sq) for entry, norm_sq in zip(limited, norms_sq)])
        lams = []
        for (group, route, p, g, state, t, _), total, rest in zip(limited, totals, passes):
            norm = total.sqrt().reshape(())
            prev_norm = state["prev_norm"]
            lam = limiter_factor(norm.to(prev_norm.device), prev_norm, group["limiter"])
            prev_norm.copy_(norm / lam)
            lams.append(lam)
            if rest is None:
                continue
            scalars = scalars_for(group, t)
            step_alpha = scalars.step_size * group["alpha"]
            if rest[0] == "haar":
                haar_apply(p, g, rest[1], rest[2], step_alpha / lam, scalars.decay, group["level"])
            else:
                _, transform, ctx, denom, normalized = rest
                update = transform.synthesize(normalized / lam, ctx, denom * lam)
                new_param = p.to(update.dtype) - step_alpha * update
                p.copy_(new_param - scalars.decay * new_param)
        for key, indices in kernel_batches.items():
            group = limited[indices[0]][0]
            scales = torch.stack([scalars_for(group, limited[i][5]).step_size * group["alpha"] / lams[i].cpu()
                                  for i in indices]).float()
            cpu_kernel.dwt_pass2(*kernel_args[key], key[1], group["level"], group["eps"], scales,
                                 scalars_for(group, limited[indices[0]][5]).decay)

    @staticmethod
    def _lists(items, limiter: bool = False):
        params, grads, states = zip(*items)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        if not limiter:
            return list(params), list(grads), exp_avgs, exp_avg_sqs
        return list(params), list(grads), exp_avgs, exp_avg_sqs, [s["prev_norm"] for s in states]

    # torch ops, eager or compiled: chunks of same-shape matrices per call
    def _torch_haar(self, items, group, scalars, fn=gwt_haar_group):
        step_size, decay = scalars.cpu_tensors()
        beta1, beta2 = group["betas"]
        limiter = group["limiter"]
        for start in range(0, len(items), GROUP_CHUNK):
            params, grads, exp_avgs, exp_avg_sqs, *prev = self._lists(items[start:start + GROUP_CHUNK],
                                                                      limiter is not None)
            fn(params, grads, exp_avgs, exp_avg_sqs, prev[0] if prev else None, step_size, decay, beta1, beta2,
               group["eps"], group["alpha"], limiter, group["level"])

    def _torch_adam(self, items, group, scalars, fn=adam_group):
        step_size, decay = scalars.cpu_tensors()
        beta1, beta2 = group["betas"]
        for start in range(0, len(items), GROUP_CHUNK):
            fn(*self._lists(items[start:start + GROUP_CHUNK]), step_size, decay, beta1, beta2, group["eps"])

    def _compiled_haar(self, items, group, scalars):
        self._torch_haar(items, group, scalars, compiled(gwt_haar_group))

    def _compiled_adam(self, items, group, scalars):
        self._torch_adam(items, group, scalars, compiled(adam_group))

    def _ptwt(self, items, group, scalars):
        """Any wavelet and boundary through ptwt's transform, one matrix at a time (eager)."""
        step_size, decay = scalars.cpu_tensors()
        beta1, beta2 = group["betas"]
        transform = self.transform_for(items[0][0], group)
        for p, grad, state in items:
            gwt_general_step(p, grad, state["exp_avg"], state["exp_avg_sq"], state.get("prev_norm"), step_size,
                             decay, beta1, beta2, group["eps"], group["alpha"], group["limiter"], transform)

    # C kernels (fp32 CPU): one call per batch, arguments checked in gwt.optim.cpu_kernel
    def _cpu_haar(self, items, group, scalars):
        beta1, beta2 = group["betas"]
        limiter = group["limiter"]
        params, grads, exp_avgs, exp_avg_sqs, *prev = self._lists(items, limiter is not None)
        cpu_kernel.haar_step(params, grads, exp_avgs, exp_avg_sqs, prev[0] if prev else None, group["level"],
                             beta1, beta2, group["eps"], scalars.step_size * group["alpha"], limiter, scalars.decay)

    def _cpu_dwt(self, items, group, scalars):
        beta1, beta2 = group["betas"]
        limiter = group["limiter"]
        params, grads, exp_avgs, exp_avg_sqs, *prev = self._lists(items, limiter is not None)
        cpu_kernel.dwt_step(params, grads, exp_avgs, exp_avg_sqs, prev[0] if prev else None, group["wavelet"],
                            group["level"], beta1, beta2, group["eps"], scalars.step_size * group["alpha"], limiter,
                            scalars.decay)

    def _cpu_adam(self, items, group, scalars):
        beta1, beta2 = group["betas"]
        cpu_kernel.adam_step(*self._lists(items), beta1, beta2, group["eps"], scalars.step_size, scalars.decay)

    # Triton kernels (gwt/optim/triton_kernels.py): same-shape matrices per call
    def _triton_haar(self, items, group, scalars):
        self._triton_gwt(_triton().haar_group, {}, items, group, scalars)

    def _triton_dwt(self, items, group, scalars):
        self._triton_gwt(_triton().dwt_group, {"wavelet": group["wavelet"]}, items, group, scalars)

    def _triton_gwt(self, fn, extra, items, group, scalars):
        beta1, beta2 = group["betas"]
        limiter = group["limiter"]
        params, grads, exp_avgs, exp_avg_sqs, *prev = self._lists(items, limiter is not None)
        step_size, decay = scalars.device_tensors(params[0].device)
        fn(params, grads, exp_avgs, exp_avg_sqs, prev[0] if prev else None, **extra, level=group["level"],
           beta1=beta1, beta2=beta2, eps=group["eps"], alpha=group["alpha"], gamma=limiter, step_size=step_size,
           decay=decay)

    def _triton_adam(self, items, group, scalars):
        beta1, beta2 = group["betas"]
        params, grads, exp_avgs, exp_avg_sqs = self._lists(items)
        step_size, decay = scalars.device_tensors(params[0].device)
        _triton().adam_group(params, grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2, eps=group["eps"],
                             step_size=step_size, decay=decay)
