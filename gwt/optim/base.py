"""Base class of the GWT optimizers: owns argument checks, group validation, state creation,
state loading and copying, and the per-parameter loop; subclasses supply the per-parameter math."""
from __future__ import annotations

import torch

from gwt.optim._common import (
    check_gwt_group,
    check_grad,
    check_range,
    resolve_backend,
    resolve_state_dtype,
    state_dtype_for,
)
from gwt.optim import distributed
from gwt.wavelets import RowTransform, approx_len

#: Keys every GWT group carries, with their defaults.
GWT_DEFAULTS = dict(wavelet="haar", level=2, alpha=0.25, boundary="zero", limiter=1.01)


class GWTOptimizerBase(torch.optim.Optimizer):
    """Common machinery. Groups with ``level=0`` or ``wavelet=None`` run the plain rule.

    ``BACKENDS``: the ``backend`` values a subclass implements (``auto`` resolves per parameter).
    """

    BACKENDS: tuple[str, ...] = ("auto", "torch")
    #: State keys that hold statistics over all rows: replicated for row-sharded DTensor parameters.
    REPLICATED_STATES: tuple[str, ...] = ()
    #: Group keys (besides GWT_DEFAULTS) a loaded state dict must carry.
    GROUP_KEYS: tuple[str, ...] = ("lr", "weight_decay")

    def __init__(self, params, defaults: dict, *, state_dtype=None, backend: str | None = "auto"):
        self._check_lr(defaults["lr"])
        check_range("weight_decay", defaults["weight_decay"], 0.0)
        self.state_dtype = resolve_state_dtype(state_dtype)
        self.backend = resolve_backend(backend)
        if self.backend not in self.BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not available for {type(self).__name__}; "
                             f"valid: {', '.join(self.BACKENDS)}")
        self._reset_caches()
        super().__init__(params, defaults)

    # -- groups ------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, and a group that fails validation is not installed (the optimizer is unchanged)."""
        count = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._validate_group(self.param_groups[-1])
        except Exception:
            del self.param_groups[count:]
            raise
        self._reset_caches()

    def _validate_group(self, group: dict) -> None:
        if group.pop("closed_form", True) is not True:
            raise ValueError(f"closed_form=False is not an option of {type(self).__name__}; the Haar closed form is "
                             "exact (wavelet='db1' runs Haar through the general transform)")
        self._check_lr(group["lr"])
        check_range("weight_decay", group["weight_decay"], 0.0)
        for i, p in enumerate(group["params"]):
            if distributed.is_dtensor(p):
                distributed.check_placements(p, self.param_name(group, i, len(self.param_groups) - 1))
        self._check_group(group)
        check_gwt_group(group, group.get("param_names"))

    def _check_lr(self, lr) -> None:
        """A learning rate: a Python number >= 0 (subclasses may accept more)."""
        check_range("lr", lr, 0.0)

    def _check_group(self, group: dict) -> None:
        """Subclass hook for rule-specific keys."""

    def _reset_caches(self) -> None:
        """Forget what is derived from the groups and states (after they change)."""

    @staticmethod
    def param_name(group: dict, index: int, group_index: int) -> str:
        names = group.get("param_names")
        return repr(names[index]) if names else f"#{index} of group {group_index}"

    @staticmethod
    def approx_shape(param: torch.Tensor, group: dict) -> tuple[int, int]:
        n = param.shape[-1]
        return param.shape[0], approx_len(n, group["wavelet"], group["level"], group["boundary"])

    @staticmethod
    def transform_for(param: torch.Tensor, group: dict) -> RowTransform:
        return RowTransform(param.shape[-1], group["wavelet"], group["level"], group["boundary"])

    def _params_with_grad(self, group: dict):
        for p in group["params"]:
            if p.grad is None:
                continue
            check_grad(p, p.grad)
            yield p, p.grad

    def _params_with_state(self, group: dict):
        """``(param, grad, state)`` of each parameter with a gradient, its state created on first use."""
        for p, grad in self._params_with_grad(group):
            state = self.state[p]
            if not state:
                self._init_state(p, group, state)
            yield p, grad, state

    def _new_state_tensor(self, shape, param: torch.Tensor, dtype: torch.dtype | None = None, *,
                          replicate: bool = False) -> torch.Tensor:
        """Zeros of ``shape``; for a DTensor parameter a DTensor of that global shape laid out as the
        parameter (rows split as its rows; ``replicate``: whole on every rank)."""
        dtype = dtype or state_dtype_for(param, self.state_dtype)
        if distributed.is_dtensor(param):
            return distributed.new_state(shape, param, dtype, replicate=replicate)
        return torch.zeros(shape, dtype=dtype, device=param.device)

    def _init_state(self, p: torch.Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError

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

    # -- copies and pickles ------------------------------------------------------------------

    def __getstate__(self):
        state = super().__getstate__()
        state.update(state_dtype=self.state_dtype, backend=self.backend)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._reset_caches()

    # -- loading -----------------------------------------------------------------------------

    def _expected_state(self, p: torch.Tensor, group: dict) -> dict:
        """The state this optimizer creates for ``p`` in ``group`` (shapes and dtypes, no memory)."""
        expected: dict = {}
        self._init_state(torch.empty(p.shape, dtype=p.dtype, device="meta"), group, expected)
        return expected

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by this optimizer class.

        Checked before anything changes: the groups carry this optimizer's keys with valid values,
        and every state tensor has the shape this optimizer would create for its parameter (an
        error names the parameter and both shapes). State tensors keep the dtypes this optimizer
        creates (fp32 moments for bf16/fp16 parameters, ``state_dtype``), whatever the parameter
        dtype; a ``step`` saved as a plain number is accepted.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' and "
                             "'param_groups' (from optimizer.state_dict())")
        saved_state, saved_groups = state_dict["state"], state_dict["param_groups"]
        plan = self._check_loaded(saved_state, saved_groups)
        super().load_state_dict(dict(state_dict, state={}))
        for p, saved, expected in plan:
            self.state[p] = self._restore(p, saved, expected, self.REPLICATED_STATES)
        self._reset_caches()

    def _check_loaded(self, saved_state: dict, saved_groups: list) -> list:
        """Validate a loaded state dict against this optimizer; returns (param, saved, expected) per state."""
        cls = type(self).__name__
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{cls}.load_state_dict: the state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer {len(self.param_groups)}")
        required = set(self.defaults) & (set(GWT_DEFAULTS) | set(self.GROUP_KEYS))
        plan = []
        for g, (group, saved_group) in enumerate(zip(self.param_groups, saved_groups)):
            missing = sorted(required - set(saved_group))
            if missing:
                raise ValueError(f"{cls}.load_state_dict: parameter group {g} of the state dict lacks "
                                 f"{', '.join(map(repr, missing))}: it was not saved by {cls} (e.g. by "
                                 f"torch.optim.AdamW); valid: a state dict from {cls}.state_dict()")
            if len(saved_group["params"]) != len(group["params"]):
                raise ValueError(f"{cls}.load_state_dict: parameter group {g} has {len(saved_group['params'])} "
                                 f"parameters in the state dict, {len(group['params'])} in this optimizer")
            merged = dict(saved_group, params=group["params"])
            if "param_names" in group and "param_names" not in saved_group:
                merged["param_names"] = group["param_names"]
            self._validate_group(dict(merged))
            for i, (pid, p) in enumerate(zip(saved_group["params"], group["params"])):
                if pid not in saved_state:
                    continue
                saved = saved_state[pid]
                expected = self._expected_state(p, merged)
                name = self.param_name(merged, i, g)
                for key, want in expected.items():
                    if key not in saved:
                        raise ValueError(f"{cls}.load_state_dict: the state of parameter {name} lacks {key!r}; "
                                         f"valid: a state dict from {cls}.state_dict()")
                    value = saved[key]
                    if isinstance(value, torch.Tensor):
                        if value.shape != want.shape:
                            raise ValueError(
                                f"{cls}.load_state_dict: state {key!r} of parameter {name} has shape "
                                f"{tuple(value.shape)}, but this optimizer needs {tuple(want.shape)} for that "
                                f"parameter (shape {tuple(p.shape)}, wavelet={merged.get('wavelet')!r}, "
                                f"level={merged.get('level')})")
                        if not (value.is_floating_point() or key == "step"):
                            raise ValueError(f"{cls}.load_state_dict: state {key!r} of parameter {name} is a "
                                             f"{value.dtype} tensor; valid: a floating-point tensor")
                    elif key != "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(f"{cls}.load_state_dict: state {key!r} of parameter {name} is "
                                         f"{type(value).__name__}; valid: a tensor of shape {tuple(want.shape)}")
                plan.append((p, saved, expected))
        return plan

    @staticmethod
    def _restore(p: torch.Tensor, saved: dict, expected: dict, replicated=()) -> dict:
        """Copies of the saved states on the parameter's device, in this optimizer's dtypes and,
        for DTensor parameters, its layout (``step`` and ``prev_norm`` stay plain tensors)."""
        state = {}
        for key, want in expected.items():
            value = saved[key]
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(float(value))
            device = p.device if want.device.type == "meta" else want.device
            value = value.detach()
            if key == "step" or (want.dim() == 0 and not distributed.is_dtensor(value)):
                value = distributed.local(value)
            else:
                value = distributed.layout_like(value, p, replicate=key in replicated)
            state[key] = value.to(device=device, dtype=want.dtype, copy=True)
        return state
