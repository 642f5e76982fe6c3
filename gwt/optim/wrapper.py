"""GWT around any optimizer (the paper's Algorithm 2).

For every matrix in a GWT group the wrapped optimizer sees a stand-in tensor of the
approximation's shape (m, len(A_l)) whose gradient is ``A_l``; it keeps its states for that
stand-in, so they are about 1/2**level the size. Each step:

1. ``A, details = transform(G)``; the stand-in is zeroed and gets ``A`` as gradient.
2. The inner optimizer steps; the stand-in's new value is its step ``delta`` (lr included).
3. ``W += alpha * inverse([delta, -s * details])`` with ``s = lr`` (``detail_scale="none"``,
   Algorithm 2 exactly: details pass through, scaled by the learning rate) or
   ``s = ||delta|| / ||A||`` (``detail_scale="ratio"``: details get the gain the inner optimizer
   gave the approximation).
4. Decoupled weight decay ``W -= lr * weight_decay * W`` (the inner optimizer gets
   ``weight_decay=0`` for stand-ins, which are zero anyway).

Groups without GWT (level 0) are handed to the inner optimizer unchanged, with their own
weight decay. The learning rate of each outer group is copied to its inner group before every
step, so ordinary LR schedulers work on the wrapper.

``state[p]`` is the inner optimizer's state of ``p``'s stand-in (the same dict), so
``state_dict()`` has torch's layout keyed by the wrapper's own parameters, each group carrying the
inner optimizer's group options under ``"inner"``; torch.distributed.checkpoint maps it to
parameter names like any optimizer's.
"""
from __future__ import annotations

import torch

from gwt.optim._common import compute_dtype, group_is_gwt
from gwt.optim import distributed
from gwt.optim.base import GWT_DEFAULTS, GWTOptimizerBase

DETAIL_SCALES = ("none", "ratio")
_GWT_KEYS = set(GWT_DEFAULTS) | {"detail_scale", "param_names"}


class GWT(GWTOptimizerBase):
    """Wrap ``optimizer_class`` (any ``torch.optim.Optimizer``) with GWT.

    ``GWT(groups, torch.optim.SGD, lr=0.1, momentum=0.9, wavelet="haar", level=2)``; the keyword
    arguments that are not GWT keys (wavelet, level, alpha, boundary, detail_scale, backend;
    lr, weight_decay) go to ``optimizer_class``. ``backend``: ``"auto"`` or ``"torch"`` (the
    transform runs in torch ops; the inner optimizer brings its own implementation).

    DTensor parameters (FSDP2): each stand-in is a DTensor laid out as its parameter (rows split
    the same way), so the inner optimizer (any optimizer that takes DTensors, e.g. torch's AdamW)
    keeps sharded states; the transform runs on the local rows. ``detail_scale="ratio"`` sums
    the norms of all matrices with one all-reduce per step.
    """

    def __init__(self, params, optimizer_class, lr: float = 1e-3, weight_decay: float = 0.0, *,
                 wavelet: str | None = "haar", level: int = 2, alpha: float = 1.0, boundary: str = "zero",
                 detail_scale: str = "none", backend: str | None = "auto", **inner_kwargs):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ValueError(f"optimizer_class={optimizer_class!r} must be a torch.optim.Optimizer subclass")
        if detail_scale not in DETAIL_SCALES:
            raise ValueError(f"detail_scale={detail_scale!r}; valid: {', '.join(DETAIL_SCALES)}")
        defaults = dict(GWT_DEFAULTS, lr=lr, weight_decay=weight_decay, wavelet=wavelet, level=level, alpha=alpha,
                        boundary=boundary, limiter=None, detail_scale=detail_scale)
        super().__init__(params, defaults, backend=backend)
        self.optimizer_class = optimizer_class
        self.stand_ins: dict[torch.Tensor, torch.Tensor] = {}
        self.inner = optimizer_class([self._inner_group(group) for group in self.param_groups], **inner_kwargs)

    def _inner_group(self, group: dict) -> dict:
        """The inner optimizer's group for an outer ``group``: its stand-ins (made here) for a GWT
        group, the parameters themselves otherwise; the inner optimizer's own keys."""
        inner = {k: v for k, v in group.items() if k not in _GWT_KEYS and k != "params"}
        if group_is_gwt(group):
            for p in group["params"]:
                self.stand_ins[p] = self._new_state_tensor(self.approx_shape(p, group), p, compute_dtype(p))
            inner.update(params=[self.stand_ins[p] for p in group["params"]], weight_decay=0.0)
        else:
            inner["params"] = list(group["params"])
        return inner

    def add_param_group(self, param_group: dict) -> None:
        """As torch's; after construction the inner optimizer gets the matching group too (a
        group that either optimizer refuses leaves both unchanged)."""
        count = len(self.param_groups)
        super().add_param_group(param_group)
        if not hasattr(self, "inner"):
            return  # construction: the inner optimizer is built from all groups at once
        group = self.param_groups[-1]
        try:
            self.inner.add_param_group(self._inner_group(group))
        except Exception:
            del self.param_groups[count:]
            for p in group["params"]:
                self.stand_ins.pop(p, None)
            raise

    def _link_states(self) -> None:
        """``state[p]`` := the inner optimizer's state of p's stand-in (of p itself at level 0)."""
        if len(self.state) == len(self.inner.state):
            return
        for group in self.param_groups:
            for p in group["params"]:
                key = self.stand_ins.get(p, p)
                if key in self.inner.state:
                    self.state[p] = self.inner.state[key]

    def _check_group(self, group: dict) -> None:
        if group["detail_scale"] not in DETAIL_SCALES:
            raise ValueError(f"detail_scale={group['detail_scale']!r}; valid: {', '.join(DETAIL_SCALES)}")

    def extra_state_roots(self):
        """Tensors held besides ``self.state``: the inner optimizer's state and the stand-ins."""
        return [self.inner.state, list(self.stand_ins.values())]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        pending = []
        for group, inner_group in zip(self.param_groups, self.inner.param_groups):
            inner_group["lr"] = group["lr"]
            if not group_is_gwt(group):
                continue
            for p, grad in self._params_with_grad(group):
                if p.numel() == 0:
                    continue  # nothing to update
                if distributed.is_dtensor(p):
                    pending.append(self._sharded_analyze(group, p, grad))
                    continue
                transform = self.transform_for(p, group)
                approx, ctx = transform.analyze(grad.to(compute_dtype(p)))
                stand_in = self.stand_ins[p]
                stand_in.zero_()
                stand_in.grad = approx
                pending.append((group, p, stand_in, transform, approx, ctx))
        self.inner.step()
        self._link_states()
        gains = self._sharded_gains(pending)
        for group, p, stand_in, transform, approx, ctx in pending:
            delta = stand_in
            if distributed.is_dtensor(p):
                self._sharded_apply(group, p, stand_in, transform, ctx, gains.get(p))
                continue
            if group["detail_scale"] == "ratio":
                gain = torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(approx).clamp_min(1e-30)
            else:
                gain = torch.tensor(group["lr"], dtype=delta.dtype, device=delta.device)
            update = transform.synthesize(delta, ctx, -1.0 / gain.clamp_min(1e-30))
            new_param = p.to(delta.dtype) + group["alpha"] * update
            new_param = new_param - group["lr"] * group["weight_decay"] * new_param
            p.copy_(new_param)
            stand_in.grad = None
        return loss

    # -- DTensor parameters (gwt/optim/distributed.py): the transform on the local rows ----------

    def _sharded_analyze(self, group, p, grad):
        transform = self.transform_for(p, group)  # rows are whole: the row length is global
        p_local, g_local, stand_in = p.to_local(), distributed.local_grad(p, grad), self.stand_ins[p]
        if p_local.shape[0]:
            approx, ctx = transform.analyze(g_local.to(compute_dtype(p)))
        else:  # no rows here
            approx, ctx = stand_in.to_local().new_zeros(stand_in.to_local().shape), None
        stand_in.zero_()
        stand_in.grad = distributed.wrap_like(approx, p, stand_in.shape)
        return group, p, stand_in, transform, approx, ctx

    @staticmethod
    def _sharded_gains(pending) -> dict:
        """``||delta|| / ||A||`` of the sharded matrices with ``detail_scale="ratio"``, their local
        squared norms summed over ranks together."""
        ratio = [(p, stand_in, approx) for group, p, stand_in, _, approx, _ in pending
                 if distributed.is_dtensor(p) and group["detail_scale"] == "ratio"]
        if not ratio:
            return {}
        partials = [(distributed.reduce_group(p), torch.stack([
            torch.linalg.vector_norm(stand_in.to_local(), dtype=torch.float64).square(),
            torch.linalg.vector_norm(approx, dtype=torch.float64).square()])) for p, stand_in, approx in ratio]
        totals = distributed.all_reduce_sums(partials)
        return {p: total[0].sqrt() / total[1].sqrt().clamp_min(1e-30) for (p, _, _), total in zip(ratio, totals)}

    @staticmethod
    def _sharded_apply(group, p, stand_in, transform, ctx, gain) -> None:
        delta, p_local = stand_in.to_local(), p.to_local()
        stand_in.grad = None
        if p_local.shape[0] == 0:
            return
        if gain is None:
            gain = torch.tensor(group["lr"], dtype=delta.dtype, device=delta.device)
        update = transform.synthesize(delta, ctx, -1.0 / gain.to(delta.dtype).clamp_min(1e-30))
        new_param = p_local.to(delta.dtype) + group["alpha"] * update
        new_param = new_param - group["lr"] * group["weight_decay"] * new_param
        p_local.copy_(new_param)

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none)
        self.inner.zero_grad(set_to_none)

    def __getstate__(self):
        state = super().__getstate__()
        state.update(inner=self.inner, stand_ins=self.stand_ins, optimizer_class=self.optimizer_class)
        return state

    def _init_state(self, p, group, state) -> None:
        """Nothing per parameter: the inner optimizer keeps the states (of the stand-ins)."""

    def state_dict(self):
        """torch's layout: ``state`` keyed by this optimizer's parameters (the inner optimizer's
        state of each stand-in), ``param_groups`` with the inner group's options under ``"inner"``."""
        self._link_states()
        state_dict = super().state_dict()
        for saved, inner in zip(state_dict["param_groups"], self.inner.param_groups):
            saved["inner"] = {k: v for k, v in inner.items() if k != "params"}
        return state_dict

    def load_state_dict(self, state_dict):
        """Load :meth:`state_dict`'s layout (or the earlier ``{"gwt": ..., "inner": ...}`` one).
        Checked first: the groups match this optimizer's and each carries its inner options, and
        every state tensor of one dimension or more has the shape of its stand-in."""
        cls = type(self).__name__
        if isinstance(state_dict, dict) and set(state_dict) == {"gwt", "inner"}:
            outer, inner = state_dict["gwt"], state_dict["inner"]
        elif isinstance(state_dict, dict) and {"state", "param_groups"} <= set(state_dict) and \
                isinstance(state_dict["param_groups"], list) and isinstance(state_dict["state"], dict):
            groups = state_dict["param_groups"]
            for g, saved in enumerate(groups):
                if not (isinstance(saved, dict) and isinstance(saved.get("inner"), dict)
                        and isinstance(saved.get("params"), list)):
                    raise ValueError(f"{cls}.load_state_dict: parameter group {g} lacks the inner optimizer's options "
                                     "('inner') or its 'params'; valid: a state dict from GWT.state_dict()")
            self._check_inner_shapes(state_dict["state"], groups)
            outer = {"state": {}, "param_groups": [{k: v for k, v in g.items() if k != "inner"} for g in groups]}
            inner = {"state": state_dict["state"],
                     "param_groups": [dict(g["inner"], params=g["params"]) for g in groups]}
        else:
            keys = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{cls}.load_state_dict: expected a dict from GWT.state_dict() ('state' and "
                             f"'param_groups'), got {keys}")
        super().load_state_dict(outer)
        self.inner.load_state_dict(inner)
        self.state.clear()
        self._link_states()

    def _check_inner_shapes(self, saved_state: dict, groups: list) -> None:
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict has {len(groups)} parameter "
                             f"groups, this optimizer {len(self.param_groups)}")
        for g, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: parameter group {g} has "
                                 f"{len(saved['params'])} parameters in the state dict, {len(group['params'])} here")
            for i, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                state = saved_state.get(pid, {})
                if not isinstance(state, dict):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: the state of parameter "
                                     f"{self.param_name(group, i, g)} is a {type(state).__name__}; valid: a dict")
                want = tuple(self.stand_ins.get(p, p).shape)
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != want:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state {key!r} of parameter "
                                         f"{self.param_name(group, i, g)} has shape {tuple(value.shape)}, but this "
                                         f"optimizer needs {want} (wavelet={group['wavelet']!r}, level={group['level']})")

