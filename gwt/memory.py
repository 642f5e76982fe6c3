"""Optimizer-state memory: measured from live optimizers, and estimated from shapes."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn

from gwt.optim.distributed import is_dtensor, local_rows
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


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, *, local: bool = False) -> int:
    """Bytes of every tensor the optimizer holds in its state (projectors of GaLore-type
    optimizers, the inner optimizer and workspace of :class:`gwt.GWT`, scalars included).
    Storages shared between tensors count once.

    DTensor states (sharded parameters, gwt/optim/distributed.py) count their global size, or
    with ``local=True`` the bytes of this rank's local shard (what this rank holds; plain
    tensors count fully either way)."""
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
            if is_dtensor(t):
                if not local:
                    storages[("dtensor", id(t))] = t.numel() * t.element_size()
                    continue
                t = t.to_local()
            storage = t.untyped_storage()
            storages[(t.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def optimizer_state_bytes_local(optimizer: torch.optim.Optimizer) -> int:
    """:func:`optimizer_state_bytes` of this rank's local shards (``local=True``)."""
    return optimizer_state_bytes(optimizer, local=True)


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
                         rank: int = 128, state_bytes: int = 4, param_bytes: int = 4, world_size: int = 1,
                         shard: int = 0) -> int:
    """Analytic optimizer-state bytes from parameter shapes (formulas in docs/update_rule.md, Memory).

    ``model_or_shapes``: a module or ``{name: shape}``. ``targets``: names of the matrices that
    get GWT/low-rank treatment (default: every 2-D parameter). Per parameter:

    - ``adamw``: ``2 * numel`` states + a 4-byte step tensor (GaLore keeps its step in Python).
    - ``gwt``: target (m, n): ``2 * m * len(A_l)`` + step + limiter norm (param_bytes);
      others as Adam.
    - ``galore``: target (m, n): ``2 * r * max(m, n)`` moments + ``r * min(m, n)`` projector.

    ``world_size`` > 1: the bytes held by shard ``shard`` (0, the largest) when every parameter
    is split by rows over ``world_size`` ranks as FSDP2 does (chunks of ``ceil(rows / world_size)``
    rows; states follow their parameter's rows, step and limiter scalars are on every rank).
    GaLore needs whole matrices and has no sharded estimate.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"estimate_state_bytes: world_size={world_size!r}; valid: an int >= 1")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < world_size:
        raise ValueError(f"estimate_state_bytes: shard={shard!r}; valid: an int in [0, world_size={world_size})")
    if world_size > 1 and name == "galore":
        raise ValueError("estimate_state_bytes: name='galore' with world_size > 1: GaLore projects whole matrices "
                         "and does not run on row-sharded parameters; valid names for sharding: adamw, gwt")
    shapes = _named_shapes(model_or_shapes)
    step = 0 if name == "galore" else 4  # galore-torch counts steps in a Python int
    target_set = set(targets) if targets is not None else {n for n, s in shapes.items() if len(s) == 2}
    total = 0
    for pname, shape in shapes.items():
        if world_size > 1 and shape:
            shape = (local_rows(shape[0], world_size, shard), *shape[1:])
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
