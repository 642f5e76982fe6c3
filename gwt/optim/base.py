"""Base class of the GWT optimizers: owns argument checks, group validation, state creation
and the per-parameter loop; subclasses supply the per-parameter math."""
from __future__ import annotations

import torch

from gwt.optim._common import (
    check_gwt_group,
    check_grad,
    check_range,
    compile_enabled,
    resolve_state_dtype,
    state_dtype_for,
)
from gwt.wavelets import RowTransform, approx_len

#: Keys every GWT group carries, with their defaults.
GWT_DEFAULTS = dict(wavelet="haar", level=2, alpha=0.25, boundary="zero", limiter=1.01, closed_form=True)


class GWTOptimizerBase(torch.optim.Optimizer):
    """Common machinery. Groups with ``level=0`` or ``wavelet=None`` run the plain rule."""

    def __init__(self, params, defaults: dict, *, state_dtype=None, compile: bool | None = None):
        check_range("lr", defaults["lr"], 0.0)
        check_range("weight_decay", defaults["weight_decay"], 0.0)
        self.state_dtype = resolve_state_dtype(state_dtype)
        self.use_compile = compile_enabled(compile)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("lr", group["lr"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        self._check_group(group)
        check_gwt_group(group, group.get("param_names"))

    def _check_group(self, group: dict) -> None:
        """Subclass hook for rule-specific keys."""

    @staticmethod
    def approx_shape(param: torch.Tensor, group: dict) -> tuple[int, int]:
        n = param.shape[-1]
        return param.shape[0], approx_len(n, group["wavelet"], group["level"], group["boundary"])

    @staticmethod
    def transform_for(param: torch.Tensor, group: dict) -> RowTransform:
        return RowTransform(param.shape[-1], group["wavelet"], group["level"], group["boundary"],
                            group["closed_form"])

    def _params_with_grad(self, group: dict):
        for p in group["params"]:
            if p.grad is None:
                continue
            check_grad(p, p.grad)
            yield p, p.grad

    def _new_state_tensor(self, shape, param: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype or state_dtype_for(param, self.state_dtype), device=param.device)

    @staticmethod
    def _evaluate(closure):
        """Run the optional closure (with gradients enabled) and return its loss."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @staticmethod
    def _increment_step(state: dict) -> int:
        # Step lives on the CPU (as in torch.optim): reading it never synchronises a GPU.
        t = int(state["step"].item()) + 1
        state["step"].fill_(t)
        return t
