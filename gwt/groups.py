"""Which parameters get GWT: parameter groups built from module-name patterns."""
from __future__ import annotations

from typing import Iterable

import torch.nn as nn

#: Named target presets. A Linear layer is targeted when any pattern is a substring of its
#: qualified module name.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    # Released pre-training targets: q, k, v, o, gate, up, down of every LLaMA block.
    "llama": ("attn", "mlp"),
    # Released GLUE targets for RoBERTa (attention.output.dense and output.dense both match).
    "roberta": ("query", "key", "value", "intermediate.dense", "output.dense"),
    # Every Linear layer of a transformers encoder (the paper's GLUE protocol).
    "encoder_linear": ("encoder.",),
    "all_linear": ("",),
}


def resolve_targets(target_modules) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        if target_modules not in TARGET_PRESETS:
            raise ValueError(
                f"target_modules={target_modules!r} is not a preset; valid presets: "
                f"{', '.join(TARGET_PRESETS)}, or a list of module-name substrings"
            )
        return TARGET_PRESETS[target_modules]
    patterns = tuple(target_modules)
    if not patterns or not all(isinstance(s, str) for s in patterns):
        raise ValueError(f"target_modules={target_modules!r} must be a preset name or a non-empty list of strings")
    return patterns


def target_linear_weights(model: nn.Module, target_modules=("attn", "mlp")) -> dict[str, nn.Parameter]:
    """Trainable weights of the Linear layers whose names match ``target_modules``, by name."""
    patterns = resolve_targets(target_modules)
    found = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(pat in mod_name for pat in patterns):
            if module.weight.requires_grad:
                found[f"{mod_name}.weight" if mod_name else "weight"] = module.weight
    if not found:
        raise ValueError(
            f"target_modules={target_modules!r} matched no trainable nn.Linear in {type(model).__name__}; "
            f"valid: a preset ({', '.join(TARGET_PRESETS)}) or substrings of its Linear module names"
        )
    return found


def split_params(model: nn.Module, target_modules=("attn", "mlp"), **gwt_options) -> list[dict]:
    """Two groups of named parameters: targets (with ``gwt_options``) and the rest (plain).

    Every trainable parameter appears exactly once (checked); tied parameters count once.
    """
    targets = target_linear_weights(model, target_modules)
    target_ids = {id(p) for p in targets.values()}
    rest, seen = [], set()
    for name, p in model.named_parameters():  # named_parameters() skips tied duplicates
        if p.requires_grad and id(p) not in target_ids:
            rest.append((name, p))
        seen.add(id(p))
    groups = [{"params": list(targets.items()), **gwt_options}]
    if rest:
        groups.append({"params": rest, "level": 0})
    _check_cover(model, groups)
    return groups


def _check_cover(model: nn.Module, groups: Iterable[dict]) -> None:
    counts: dict[int, int] = {}
    for group in groups:
        for _, p in group["params"]:
            counts[id(p)] = counts.get(id(p), 0) + 1
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for i, n in trainable.items() if i not in counts]
    doubled = [trainable.get(i, "?") for i, c in counts.items() if c > 1]
    if missing or doubled:
        raise ValueError(f"parameter groups must cover every trainable parameter exactly once; "
                         f"missing: {missing[:5]}, repeated: {doubled[:5]}")


def gwt_param_groups(model: nn.Module, target_modules=("attn", "mlp"), **gwt_options) -> list[dict]:
    """GWT parameter groups for :class:`gwt.GWTAdamW` (and the other GWT optimizers).

    The weights of ``nn.Linear`` modules whose qualified name contains any of
    ``target_modules`` (or a preset name: ``llama``, ``roberta``, ``encoder_linear``,
    ``all_linear``) form one group with ``gwt_options`` (e.g. ``wavelet``, ``level``, ``alpha``);
    every other trainable parameter (embeddings, norms, biases, lm_head) is in a ``level=0``
    group (plain Adam). Parameters are passed with their names, so errors can name them.
    """
    return split_params(model, target_modules, **gwt_options)
