"""GWT optimizers on DTensor parameters (FSDP2's ``fully_shard``, or any row-sharded DTensor).

FSDP2 shards every parameter by rows (``Shard(0)``): each row stays whole on one rank, so the
row-wise wavelet transform, the Adam moments and the parameter update run on each rank's local
rows with no communication. Only sums over all rows need the other ranks: the norm-growth
limiter's global norm (and, in GWT-Adafactor, the column statistics and the RMS clip). The
optimizers collect those partial sums of every matrix of a step and reduce them together with one
``all_reduce(SUM)`` per process group (one for a model sharded over one mesh).

Conventions:

- States of a matrix are DTensors on the parameter's mesh with the parameter's placements and the
  global shape (rows x compressed length); their local rows are the parameter's local rows.
  Statistics over rows (GWT-Adafactor's column statistics) are replicated.
- Scalars (``step``, the limiter's ``prev_norm``) are plain tensors, equal on every rank (as
  ``torch.optim`` keeps ``step`` under FSDP2).
- Placements: ``Shard(0)`` (whole rows) or ``Replicate`` on each mesh dimension, rows sharded
  over at most one mesh dimension; anything else is refused when the parameter is added.
- Every decision (GWT eligibility, padding, level depth, state shapes) uses the global shape.
"""
from __future__ import annotations

import math
import sys

import torch

_DTENSOR = None  # the DTensor class, once torch.distributed.tensor is imported


def is_dtensor(t) -> bool:
    """Whether ``t`` is a DTensor. Costs an isinstance check; never imports
    ``torch.distributed.tensor`` (seconds of import time): without it there are no DTensors."""
    global _DTENSOR
    if _DTENSOR is None:
        module = sys.modules.get("torch.distributed.tensor")
        if module is None or not hasattr(module, "DTensor"):
            return False
        _DTENSOR = module.DTensor
    return isinstance(t, _DTENSOR)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: writing to it writes the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def local_grad(param, grad) -> torch.Tensor:
    """The local rows of the gradient of DTensor ``param``; refuses a gradient laid out otherwise
    (a plain tensor, or other placements such as a pending ``Partial`` sum)."""
    if not is_dtensor(grad) or tuple(grad.placements) != tuple(param.placements):
        layout = tuple(grad.placements) if is_dtensor(grad) else "a plain tensor"
        raise RuntimeError(f"the gradient of the DTensor parameter of shape {tuple(param.shape)} (placements "
                           f"{tuple(param.placements)}) is {layout}; valid: a DTensor gradient with the "
                           "parameter's placements (as FSDP2's backward leaves it)")
    return grad.to_local()


def _shard_dims(p) -> list[int]:
    return [i for i, placement in enumerate(p.placements) if placement.is_shard()]


def check_placements(p, name: str) -> None:
    """Refuse a DTensor parameter whose rows are not whole on every rank (one clear line)."""
    if not is_dtensor(p):
        return
    from torch.distributed.tensor import Replicate, Shard

    for placement in p.placements:
        row_shard = isinstance(placement, Shard) and p.dim() > 0 and placement.dim % p.dim() == 0
        if not (row_shard or isinstance(placement, Replicate)):
            raise ValueError(f"parameter {name} of shape {tuple(p.shape)} is a DTensor with placement {placement} "
                             f"(placements {tuple(p.placements)}); GWT optimizers need whole rows on every rank: "
                             "valid placements are Shard(0) (FSDP2's row sharding) and Replicate()")
    if len(_shard_dims(p)) > 1:
        raise ValueError(f"parameter {name} of shape {tuple(p.shape)} is sharded by rows over "
                         f"{len(_shard_dims(p))} mesh dimensions (placements {tuple(p.placements)}); valid: "
                         "Shard(0) on at most one mesh dimension, Replicate() on the others")


def reduce_group(p):
    """The process group whose ranks hold the other rows of ``p`` (None: ``p`` is whole here)."""
    dims = _shard_dims(p)
    return p.device_mesh.get_group(dims[0]) if dims else None


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, out = 1, []
    for size in reversed(tuple(shape)):
        out.append(stride)
        stride *= max(size, 1)
    return tuple(reversed(out))


def wrap_like(local_tensor: torch.Tensor, param, shape, *, replicate: bool = False):
    """A DTensor of global ``shape`` on ``param``'s mesh whose local part is ``local_tensor``:
    the parameter's placements (rows split as the parameter's), or replicated."""
    from torch.distributed.tensor import DTensor, Replicate

    placements = [Replicate()] * param.device_mesh.ndim if replicate else param.placements
    return DTensor.from_local(local_tensor, param.device_mesh, placements, run_check=False,
                              shape=torch.Size(shape), stride=_contiguous_stride(shape))


def new_state(shape, param, dtype: torch.dtype, *, replicate: bool = False):
    """Zeros of global ``shape`` laid out as ``param`` (a DTensor): the local rows are the
    parameter's local rows; ``replicate`` gives every rank the whole tensor."""
    local_param = param.to_local()
    shape = tuple(shape)
    if replicate or not _shard_dims(param) or not shape:
        local_shape = shape
    else:
        local_shape = (local_param.shape[0], *shape[1:])
    return wrap_like(torch.zeros(local_shape, dtype=dtype, device=local_param.device), param, shape,
                     replicate=replicate)


def layout_like(value: torch.Tensor, param, *, replicate: bool = False) -> torch.Tensor:
    """A loaded state tensor in the layout this optimizer keeps for ``param``: a whole tensor is
    split by rows as ``param`` (no communication), a DTensor for a plain parameter is gathered."""
    if is_dtensor(param):
        if is_dtensor(value) or value.dim() == 0:
            return value
        from torch.distributed.tensor import Replicate, distribute_tensor

        placements = [Replicate()] * param.device_mesh.ndim if replicate else param.placements
        return distribute_tensor(value, param.device_mesh, placements, src_data_rank=None)
    return value.full_tensor() if is_dtensor(value) else value


def all_reduce_sums(partials: list[tuple[object, torch.Tensor]]) -> list[torch.Tensor]:
    """Global sums of per-rank partial sums: ``partials`` holds (process group or None, 1-D
    tensor) pairs; the tensors of one group are reduced together with one ``all_reduce(SUM)``
    (None: already global). Every rank must pass the same sequence of groups and lengths."""
    out: list = [None] * len(partials)
    buckets: dict = {}
    for i, (group, value) in enumerate(partials):
        if group is None:
            out[i] = value
        else:
            buckets.setdefault(group, []).append(i)
    import torch.distributed as dist

    for group, indices in buckets.items():
        values = [partials[i][1] for i in indices]
        flat = torch.cat([v.reshape(-1).to(torch.float64) for v in values])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for i, piece in zip(indices, flat.split([v.numel() for v in values])):
            out[i] = piece.to(partials[i][1].dtype)
    return out


def drive(steps: list[tuple[object, object]]) -> None:
    """Run per-parameter step generators in lockstep: each yields a 1-D tensor of partial sums
    and receives their global sums; each round costs one all-reduce per process group.
    ``steps``: (generator, process group or None) pairs."""
    active = []
    for gen, group in steps:
        try:
            active.append((gen, group, next(gen)))
        except StopIteration:
            pass
    while active:
        totals = all_reduce_sums([(group, partial) for _, group, partial in active])
        following = []
        for (gen, group, _), total in zip(active, totals):
            try:
                following.append((gen, group, gen.send(total)))
            except StopIteration:
                pass
        active = following


def local_rows(rows: int, world_size: int, index: int) -> int:
    """Rows of a ``rows``-row parameter held by shard ``index`` of ``world_size`` under row
    sharding (FSDP2 and DTensor's ``Shard(0)``: chunks of ``ceil(rows / world_size)`` rows as
    ``torch.chunk``, trailing shards short or empty)."""
    chunk = math.ceil(rows / world_size) if rows else 0
    return max(0, min(chunk, rows - index * chunk))
