"""Optimizer-state memory: measured from live optimizers, and estimated from shapes."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn

from gwt.wavelets import approx_len


def _tensors(obj, seen_objs: set) -> Iterable[torch.Tensor]:
    """Every tensor reachable from ``obj`` through dicts, sequences and object attributes."""
    if id(obj) in seen_objs:
        return
    seen_objs.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        if obj.grad is not None:
            yield obj.grad
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value, seen_objs)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors(value, seen_objs)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        yield from _tensors(vars(obj), seen_objs)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds in its state (projectors of GaLore-type
    optimizers, the inner optimizer and workspace of :class:`gwt.GWT`, scalars included).
    Storages shared between tensors count once."""
    storages: dict[tuple, int] = {}
    roots = [optimizer.state]
    extra = getattr(optimizer, "extra_state_roots", None)
    if extra is not None:
        roots.extend(extra())
    seen: set = set()
    for root in roots:
        for t in _tensors(root, seen):
            if t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            storages[(t.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def _named_shapes(model_or_shapes) -> dict[str, tuple[int, ...]]:
    if isinstance(model_or_shapes, nn.Module):
        return {n: tuple(p.shape) for n, p in model_or_shapes.named_parameters() if p.requires_grad}
    return {n: tuple(s) for n, s in dict(model_or_shapes).items()}


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def estimate_state_bytes(model_or_shapes, name: str = "adamw", *, targets: Iterable[str] | None = None,
                         wavelet: str = "haar", level: int = 2, boundary: str = "zero", limiter=1.01,
                         rank: int = 128, state_bytes: int = 4, param_bytes: int = 4) -> int:
    """Analytic optimizer-state bytes from parameter shapes (formulas in docs/update_rule.md, Memory).

    ``model_or_shapes``: a module or ``{name: shape}``. ``targets``: names of the matrices that
    get GWT/low-rank treatment (default: every 2-D parameter). Per parameter:

    - ``adamw``: ``2 * numel`` states + a 4-byte step tensor (GaLore keeps its step in Python).
    - ``gwt``: target (m, n): ``2 * m * len(A_l)`` + step + limiter norm (param_bytes);
      others as Adam.
    - ``galore``: target (m, n): ``2 * r * max(m, n)`` moments + ``r * min(m, n)`` projector.
    """
    shapes = _named_shapes(model_or_shapes)
    step = 0 if name == "galore" else 4  # galore-torch counts steps in a Python int
    target_set = set(targets) if targets is not None else {n for n, s in shapes.items() if len(s) == 2}
    total = 0
    for pname, shape in shapes.items():
        numel = _numel(shape)
        if pname in target_set and name == "gwt" and level > 0:
            m, n = shape
            total += 2 * m * approx_len(n, wavelet, level, boundary) * state_bytes + step
            total += param_bytes if limiter is not None else 0
        elif pname in target_set and name == "galore":
            m, n = shape
            r = min(rank, m, n)
            total += 2 * r * max(m, n) * state_bytes + r * min(m, n) * state_bytes + step
        elif name in ("adamw", "gwt", "galore"):
            total += 2 * numel * state_bytes + step
        else:
            raise ValueError(f"estimate_state_bytes: name={name!r} has no formula; valid: adamw, gwt, galore")
    return total
