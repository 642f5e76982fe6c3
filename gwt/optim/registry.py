"""Build any optimizer of the paper's comparisons by name, with the same module targeting.

``build_optimizer(model, name, lr=..., **options)``; ``name`` is one of :data:`OPTIMIZER_NAMES`.
Targeted matrices (``target_modules``, see :mod:`gwt.groups`) get the method's treatment
(GWT, GaLore/APOLLO/Fira projection); every other trainable parameter gets the method's plain
rule. Baselines come from their authors' packages (``pip install gwt[baselines]``).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn

from gwt.groups import split_params, target_linear_weights

_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def _unnamed(groups: list[dict]) -> list[dict]:
    """Drop parameter names for optimizers that do not accept (name, tensor) pairs."""
    return [dict(g, params=[p for _, p in g["params"]]) for g in groups]


def _rank(rank, model: nn.Module, target_modules) -> int:
    """``rank`` as an int, or a float in (0, 1): that fraction of the targets' smallest side."""
    if isinstance(rank, float) and 0 < rank < 1:
        sides = [min(p.shape) for p in target_linear_weights(model, target_modules).values()]
        return max(1, int(round(rank * min(sides))))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be an int >= 1 or a fraction in (0, 1)")
    return rank


def _import(module: str, extra: str = "baselines"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"optimizer needs the package providing {module!r}: pip install 'gwt[{extra}]' ({err})")


@register("adamw")
def _adamw(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, fused=None, foreach=None):
    """torch.optim.AdamW on every trainable parameter (fused kernel where available)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             fused=fused, foreach=foreach)


@register("gwt")
def _gwt(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-6, target_modules="llama", wavelet="haar",
         level=2, alpha=0.25, boundary="zero", limiter=1.01, state_dtype=None, backend="auto"):
    """GWT-AdamW (released semantics); ``backend`` picks the code that runs the step (see GWTAdamW)."""
    from gwt.optim.adamw import GWTAdamW

    groups = split_params(model, target_modules, wavelet=wavelet, level=level, alpha=alpha, boundary=boundary,
                          limiter=limiter)
    return GWTAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                    state_dtype=state_dtype, backend=backend)


@register("gwt_adafactor")
def _gwt_adafactor(model, lr, weight_decay=0.0, target_modules="llama", wavelet="haar", level=2, alpha=0.25,
                   boundary="zero", limiter=None, beta1=None, decay_rate=-0.8, eps1=1e-30, clip_threshold=1.0,
                   detail_scaling="second_moment", state_dtype=None, backend="auto"):
    """GWT-Adafactor (factored second moment on the approximation; see gwt.optim.adafactor)."""
    from gwt.optim.adafactor import GWTAdafactor

    groups = split_params(model, target_modules, wavelet=wavelet, level=level, alpha=alpha, boundary=boundary,
                          limiter=limiter)
    return GWTAdafactor(groups, lr=lr, beta1=beta1, decay_rate=decay_rate, eps1=eps1,
                        clip_threshold=clip_threshold, weight_decay=weight_decay, detail_scaling=detail_scaling,
                        state_dtype=state_dtype, backend=backend)


@register("adafactor")
def _adafactor(model, lr, weight_decay=0.0, beta1=None, decay_rate=-0.8, clip_threshold=1.0,
               scale_parameter=False, relative_step=False, warmup_init=False):
    """transformers' Adafactor with an explicit learning rate."""
    from transformers.optimization import Adafactor

    params = [p for p in model.parameters() if p.requires_grad]
    return Adafactor(params, lr=lr, beta1=beta1, decay_rate=decay_rate, clip_threshold=clip_threshold,
                     weight_decay=weight_decay, scale_parameter=scale_parameter, relative_step=relative_step,
                     warmup_init=warmup_init)


def _low_rank_groups(model, target_modules, **keys):
    return _unnamed(split_params(model, target_modules, **keys))


def _strip_level(groups):
    # split_params marks the non-target group with level=0; projection optimizers key on "rank".
    return [{k: v for k, v in g.items() if k != "level"} for g in groups]


@register("galore")
def _galore(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-6, target_modules="llama", rank=0.25,
            update_proj_gap=200, scale=0.25, proj_type="std"):
    """GaLoreAdamW (package galore-torch); ``rank`` int or fraction of the smaller side."""
    galore_torch = _import("galore_torch")
    groups = _low_rank_groups(model, target_modules, rank=_rank(rank, model, target_modules),
                              update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type)
    return galore_torch.GaLoreAdamW(_strip_level(groups), lr=lr, betas=tuple(betas), eps=eps,
                                    weight_decay=weight_decay, no_deprecation_warning=True)


@register("apollo")
def _apollo(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-6, target_modules="llama", rank=0.25,
            update_proj_gap=200, scale=1.0, scale_type="channel", proj="random", proj_type="std"):
    """APOLLOAdamW (package apollo-torch). APOLLO-Mini: rank=1, scale_type=tensor, scale=128."""
    apollo_torch = _import("apollo_torch")
    groups = _low_rank_groups(model, target_modules, rank=_rank(rank, model, target_modules),
                              update_proj_gap=update_proj_gap, scale=scale, scale_type=scale_type, proj=proj,
                              proj_type=proj_type)
    return apollo_torch.APOLLOAdamW(_strip_level(groups), lr=lr, betas=tuple(betas), eps=eps,
                                    weight_decay=weight_decay)


@register("fira")
def _fira(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-6, target_modules="llama", rank=0.25,
          update_proj_gap=200, alpha=0.25, proj_type="std"):
    """FiraAdamW (package fira)."""
    fira = _import("fira")
    groups = _low_rank_groups(model, target_modules, rank=_rank(rank, model, target_modules),
                              update_proj_gap=update_proj_gap, alpha=alpha, proj_type=proj_type)
    return fira.FiraAdamW(_strip_level(groups), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                          no_deprecation_warning=True)


@register("apollo_mini")
def _apollo_mini(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-6, target_modules="llama", rank=1,
                 update_proj_gap=200, scale=128.0, scale_type="tensor", proj="random", proj_type="std",
                 scale_front=True):
    """APOLLO-Mini (apollo-torch): APOLLOAdamW with a rank-1 random projection and one gradient scaling
    factor per matrix (``scale_type=tensor``), update scale sqrt(128) applied before the norm-growth
    limiter (``scale_front``), as in the APOLLO authors' LLaMA recipe."""
    apollo_torch = _import("apollo_torch")
    groups = _low_rank_groups(model, target_modules, rank=_rank(rank, model, target_modules),
                              update_proj_gap=update_proj_gap, scale=scale, scale_type=scale_type, proj=proj,
                              proj_type=proj_type)
    return apollo_torch.APOLLOAdamW(_strip_level(groups), lr=lr, betas=tuple(betas), eps=eps,
                                    weight_decay=weight_decay, scale_front=scale_front)


def _model_config_value(model, option: str, attr: str, value):
    """``value`` if given, else ``model.config.<attr>`` (Hugging Face models), else a clear error."""
    if value is not None:
        return value
    config = getattr(model, "config", None)
    found = getattr(config, attr, None)
    if found is None:
        raise ValueError(f"optimizer.{option} is required: {type(model).__name__} has no config.{attr}")
    return found


@register("adam_mini")
def _adam_mini(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, dim=None, n_heads=None,
               n_kv_heads=None):
    """Adam-mini (package adam-mini): one second-moment value per attention head (queries, keys),
    per output neuron (values, projections, MLP, embeddings, head) or per block (norms).
    ``dim``, ``n_heads``, ``n_kv_heads`` default to the model's ``config.hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``."""
    adam_mini = _import("adam_mini")
    dim = _model_config_value(model, "dim", "hidden_size", dim)
    n_heads = _model_config_value(model, "n_heads", "num_attention_heads", n_heads)
    config = getattr(model, "config", None)
    if n_kv_heads is None:
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return adam_mini.Adam_mini(named, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, dim=dim,
                               n_heads=n_heads, n_kv_heads=n_kv_heads, verbose=False)


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the hidden 2-D matrices and ``torch.optim.AdamW`` on every other parameter,
    as one optimizer: one ``step``, one ``zero_grad``, ``param_groups`` = Muon's groups then AdamW's
    (an lr scheduler drives both), ``state_dict() = {"muon": ..., "adamw": ...}`` (tensors, numbers and
    strings only: loads with ``torch.load(weights_only=True)``)."""

    def __init__(self, matrices, others, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, adjust_lr_fn: str | None = "match_rms_adamw",
                 betas=(0.9, 0.999), eps: float = 1e-8):
        matrices, others = list(matrices), list(others)
        if not matrices:
            raise ValueError("Muon needs at least one 2-D hidden matrix (target_modules matched none)")
        bad = [tuple(p.shape) for p in matrices if p.ndim != 2]
        if bad:
            raise ValueError(f"Muon steps only 2-D matrices; got shapes {bad[:3]}")
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(others, lr=lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay) if others else None
        super().__init__(matrices + others, {"lr": lr})
        self.param_groups = self._inner_groups()

    def _inners(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    def _inner_groups(self) -> list[dict]:
        return [g for o in self._inners() for g in o.param_groups]

    def extra_state_roots(self) -> list:
        """The inner optimizers' states (counted by :func:`gwt.memory.optimizer_state_bytes`)."""
        return [o.state for o in self._inners()]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inners():
            opt.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": None if self.adamw is None else self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "adamw"}:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"not a MuonAdamW state dict: expected keys ['adamw', 'muon'], got {keys}")
        if (state_dict["adamw"] is None) != (self.adamw is None):
            raise ValueError("MuonAdamW state dict does not match this model: the AdamW part is "
                             f"{'missing' if state_dict['adamw'] is None else 'unexpected'}")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups[:] = self._inner_groups()  # load_state_dict rebuilt the inner group dicts


@register("muon")
def _muon(model, lr, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="match_rms_adamw",
          betas=(0.9, 0.999), eps=1e-8, target_modules="llama"):
    """Muon (``torch.optim.Muon``) on the targeted hidden matrices, AdamW on embeddings, norms and the
    output head (:class:`MuonAdamW`). ``adjust_lr_fn=match_rms_adamw`` scales Muon's orthogonalised
    update to AdamW's RMS, so one ``lr`` serves both parts; ``original`` is Keller Jordan's scaling."""
    matrices = target_linear_weights(model, target_modules)
    ids = {id(p) for p in matrices.values()}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return MuonAdamW(list(matrices.values()), others, lr=lr, weight_decay=weight_decay, momentum=momentum,
                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, betas=betas, eps=eps)


ADAMW8BIT_IMPLEMENTATIONS = ("torchao", "bitsandbytes")


@register("adamw8bit")
def _adamw8bit(model, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, impl="torchao", block_size=256):
    """AdamW with 8-bit blockwise-quantised moments: ``impl=torchao`` (``torchao.optim.AdamW8bit``,
    ``block_size`` values per scale; runs on CPU and GPU) or ``impl=bitsandbytes``
    (``bitsandbytes.optim.AdamW8bit``; tensors under 4096 values keep 32-bit states)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if impl == "torchao":
        optim = _import("torchao.optim")
        return optim.AdamW8bit(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                               block_size=block_size)
    if impl == "bitsandbytes":
        return _import("bitsandbytes").optim.AdamW8bit(params, lr=lr, betas=tuple(betas), eps=eps,
                                                       weight_decay=weight_decay)
    raise ValueError(f"optimizer.impl={impl!r} is unknown; valid: {', '.join(ADAMW8BIT_IMPLEMENTATIONS)}")


INNER_OPTIMIZERS = ("sgd", "adamw", "lion", "adamw8bit")


def inner_optimizer_class(inner: str):
    if inner == "sgd":
        return torch.optim.SGD
    if inner == "adamw":
        return torch.optim.AdamW
    if inner == "lion":
        return _import("lion_pytorch", "lion").Lion
    if inner == "adamw8bit":
        return _import("bitsandbytes").optim.AdamW8bit
    raise ValueError(f"inner={inner!r} is not a wrappable optimizer; valid: {', '.join(INNER_OPTIMIZERS)}")


@register("gwt_wrap")
def _gwt_wrap(model, lr, weight_decay=0.0, inner="sgd", target_modules="llama", wavelet="haar", level=2,
              alpha=1.0, boundary="zero", detail_scale="none", inner_kwargs=None):
    """GWT around another optimizer (Algorithm 2): ``inner`` in INNER_OPTIMIZERS, its own
    keyword arguments in ``inner_kwargs`` (e.g. ``{momentum: 0.9}`` for SGD)."""
    from gwt.optim.wrapper import GWT

    groups = split_params(model, target_modules, wavelet=wavelet, level=level, alpha=alpha, boundary=boundary,
                          detail_scale=detail_scale)
    return GWT(_unnamed(groups), inner_optimizer_class(inner), lr=lr, weight_decay=weight_decay,
               **dict(inner_kwargs or {}))


OPTIMIZER_NAMES = tuple(_REGISTRY)


def optimizer_options(name: str) -> tuple[str, ...]:
    """The keyword arguments ``build_optimizer`` accepts for ``name``."""
    check_name(name)
    return tuple(p for p in inspect.signature(_REGISTRY[name]).parameters if p != "model")


def check_name(name: str) -> str:
    if name not in _REGISTRY:
        raise ValueError(f"optimizer.name={name!r} is unknown; valid: {', '.join(OPTIMIZER_NAMES)}")
    return name


def build_optimizer(model: nn.Module, name: str, **options) -> torch.optim.Optimizer:
    """Build optimizer ``name`` for ``model``; ``options`` are checked against its signature."""
    check_name(name)
    valid = optimizer_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"optimizer.{unknown[0]} is not an option of optimizer {name!r}; valid: {', '.join(valid)}")
    if "lr" not in options:
        raise ValueError(f"optimizer.lr is required for optimizer {name!r}")
    if isinstance(options.get("target_modules"), list):
        options["target_modules"] = tuple(options["target_modules"])
    return _REGISTRY[name](model, **options)
