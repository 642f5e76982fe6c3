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
         level=2, alpha=0.25, boundary="zero", limiter=1.01, closed_form=True, state_dtype=None, compile=None):
    """GWT-AdamW (released semantics)."""
    from gwt.optim.adamw import GWTAdamW

    groups = split_params(model, target_modules, wavelet=wavelet, level=level, alpha=alpha, boundary=boundary,
                          limiter=limiter, closed_form=closed_form)
    return GWTAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                    state_dtype=state_dtype, compile=compile)


@register("gwt_adafactor")
def _gwt_adafactor(model, lr, weight_decay=0.0, target_modules="llama", wavelet="haar", level=2, alpha=0.25,
                   boundary="zero", limiter=None, beta1=None, decay_rate=-0.8, eps1=1e-30, clip_threshold=1.0,
                   detail_scaling="second_moment", state_dtype=None):
    """GWT-Adafactor (factored second moment on the approximation; see gwt.optim.adafactor)."""
    from gwt.optim.adafactor import GWTAdafactor

    groups = split_params(model, target_modules, wavelet=wavelet, level=level, alpha=alpha, boundary=boundary,
                          limiter=limiter)
    return GWTAdafactor(groups, lr=lr, beta1=beta1, decay_rate=decay_rate, eps1=eps1,
                        clip_threshold=clip_threshold, weight_decay=weight_decay, detail_scaling=detail_scaling,
                        state_dtype=state_dtype)


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
