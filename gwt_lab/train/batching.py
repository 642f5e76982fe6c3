"""Derived batch numbers shared by the entrypoints."""
from __future__ import annotations


def gradient_accumulation_steps(total_batch_size: int, micro_batch_size: int, world_size: int,
                                total_key: str = "trainer.total_batch_size",
                                micro_key: str = "trainer.micro_batch_size") -> int:
    """``total_batch_size / (micro_batch_size * world_size)``; ``ValueError`` naming the keys if not a positive integer."""
    for key, value in ((total_key, total_batch_size), (micro_key, micro_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer")
    per_step = micro_batch_size * world_size
    if total_batch_size % per_step:
        options = sorted({total_batch_size // (k * world_size) for k in range(1, total_batch_size + 1)
                          if total_batch_size % (k * world_size) == 0})
        raise ValueError(
            f"{total_key}={total_batch_size} is not divisible by {micro_key} x world_size = "
            f"{micro_batch_size} x {world_size} = {per_step}; choose {micro_key} from {options} for this world "
            f"size, or change {total_key}")
    return total_batch_size // per_step
