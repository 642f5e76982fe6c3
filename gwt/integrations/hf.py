"""GWT in ``transformers.Trainer`` with one argument::

    from gwt.integrations.hf import optimizer_cls_and_kwargs

    trainer = Trainer(model=model, args=args, train_dataset=...,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(lr=1e-4, level=2))

The Trainer calls the returned factory with the model; the factory builds the parameter groups:
the weights of the targeted ``nn.Linear`` layers get GWT, every other trainable parameter plain
Adam, and weight decay follows the Trainer's own split (no decay on biases and norm weights).
``transformers`` is imported only when the factory runs.
"""
from __future__ import annotations

import re

import torch.nn as nn

from gwt.groups import TARGET_PRESETS, resolve_targets

#: Parameter-name patterns without weight decay, as ``Trainer.get_decay_parameter_names``
#: (used when the installed transformers does not provide that method).
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
OPTIMIZERS = ("adamw", "adafactor")


def _optimizer_class(name: str):
    if name == "adamw":
        from gwt.optim.adamw import GWTAdamW
        return GWTAdamW
    if name == "adafactor":
        from gwt.optim.adafactor import GWTAdafactor
        return GWTAdafactor
    raise ValueError(f"optimizer={name!r} is unknown; choose one of {list(OPTIMIZERS)}")


def _is_all_linear(target_modules) -> bool:
    return isinstance(target_modules, str) and target_modules.replace("_", "-") == "all-linear"


def _check_target_modules(target_modules) -> None:
    """Reject a value that can match nothing sensible, before any model is seen."""
    if isinstance(target_modules, str):
        if _is_all_linear(target_modules) or target_modules in TARGET_PRESETS:
            return
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules={target_modules!r} is neither 'all-linear', a preset "
                             f"({', '.join(TARGET_PRESETS)}) nor a valid regular expression ({err})") from None
        return
    if (isinstance(target_modules, (list, tuple)) and target_modules
            and all(isinstance(s, str) and s for s in target_modules)):
        return
    raise ValueError(f"target_modules={target_modules!r} must be 'all-linear', a preset "
                     f"({', '.join(TARGET_PRESETS)}), a regular expression or a non-empty list of module names")


def _matches(target_modules, module_name: str) -> bool:
    """The Trainer's ``optim_target_modules`` rule (a regex string is matched in full; a list entry
    matches as an exact name, a substring or a full regex), plus the presets of gwt.groups."""
    if isinstance(target_modules, str):
        if target_modules in TARGET_PRESETS:
            return any(pat in module_name for pat in resolve_targets(target_modules))
        return re.fullmatch(target_modules, module_name) is not None
    return any(name == module_name or name in module_name or re.fullmatch(name, module_name)
               for name in target_modules)


def target_weight_names(model: nn.Module, target_modules="all-linear") -> list[str]:
    """Names of the trainable ``nn.Linear`` weights that get GWT.

    ``"all-linear"`` is every ``nn.Linear`` except the model's output layer (``lm_head``, which is
    often tied to the input embedding); other values follow ``TrainingArguments.optim_target_modules``
    (a regex matched against the full module name, or a list of names / substrings / regexes) or
    name a preset of :data:`gwt.groups.TARGET_PRESETS`.
    """
    _check_target_modules(target_modules)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            continue
        if _is_all_linear(target_modules):
            if module is output or (output is not None and module.weight is getattr(output, "weight", None)):
                continue
        elif not _matches(target_modules, mod_name):
            continue
        names.append(f"{mod_name}.weight" if mod_name else "weight")
    if not names:
        raise ValueError(f"target_modules={target_modules!r} matched no trainable nn.Linear in "
                         f"{type(model).__name__}; valid: 'all-linear', a preset ({', '.join(TARGET_PRESETS)}), "
                         "a regex or names of its Linear modules")
    return names


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Parameters the Trainer would decay (not biases, not LayerNorm/RMSNorm weights)."""
    try:
        from transformers import Trainer
        # The method reads nothing from the Trainer instance; calling it keeps the split identical.
        return set(Trainer.get_decay_parameter_names(None, model))
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other transformers versions
        pats = [re.compile(p) for p in _NO_DECAY_PATTERNS]
        norm_params = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        return {n for n, p in model.named_parameters()
                if id(p) not in norm_params and not any(r.search(n.lower()) for r in pats)}


def param_groups(model: nn.Module, target_modules="all-linear") -> list[dict]:
    """Up to three groups of (name, parameter) pairs: the GWT targets (the optimizer's defaults),
    the other decayed parameters (plain Adam, ``level=0``) and the parameters without decay
    (plain Adam, ``level=0, weight_decay=0``). Every trainable parameter appears once (tied
    parameters count once)."""
    targets = set(target_weight_names(model, target_modules))
    decay = decay_parameter_names(model)
    gwt, plain_decay, plain_no_decay = [], [], []
    for name, p in model.named_parameters():  # skips tied duplicates
        if not p.requires_grad:
            continue
        if name in targets:
            gwt.append((name, p))
        elif name in decay:
            plain_decay.append((name, p))
        else:
            plain_no_decay.append((name, p))
    groups = [{"params": gwt}]
    if plain_decay:
        groups.append({"params": plain_decay, "level": 0})
    if plain_no_decay:
        groups.append({"params": plain_no_decay, "level": 0, "weight_decay": 0.0})
    return groups


class GWTOptimizerFactory:
    """What ``Trainer.create_optimizer`` instantiates and calls as ``factory()(model, **kwargs)``."""

    def __call__(self, model: nn.Module, target_modules="all-linear", optimizer: str = "adamw", **options):
        return _optimizer_class(optimizer)(param_groups(model, target_modules), **options)


def optimizer_cls_and_kwargs(target_modules="all-linear", optimizer: str = "adamw", **gwt_options):
    """``(factory, kwargs)`` for ``transformers.Trainer(optimizer_cls_and_kwargs=...)``.

    Args:
        target_modules: which ``nn.Linear`` weights get GWT: ``"all-linear"`` (every Linear but the
            output layer), a regular expression matched against the full module name, a list of
            module names (exact, substring or regex, as ``TrainingArguments.optim_target_modules``),
            or a preset of :func:`gwt.gwt_param_groups` (``llama``, ``roberta``, ``encoder_linear``,
            ``all_linear``). Other parameters get plain Adam.
        optimizer: ``"adamw"`` (:class:`gwt.GWTAdamW`) or ``"adafactor"`` (:class:`gwt.GWTAdafactor`).
        **gwt_options: the optimizer's keyword arguments (``lr``, ``weight_decay``, ``wavelet``,
            ``level``, ``alpha``, ...), passed unchanged. ``lr`` and ``weight_decay`` must be given
            here: the Trainer hands a factory neither ``TrainingArguments.learning_rate`` nor
            ``weight_decay``. Biases and norm weights never get weight decay.

    The returned pair is checked now (unknown optimizer, bad ``target_modules``); matching against
    the model happens when the Trainer creates the optimizer.
    """
    _optimizer_class(optimizer)
    _check_target_modules(target_modules)
    return GWTOptimizerFactory, dict(target_modules=target_modules, optimizer=optimizer, **gwt_options)
