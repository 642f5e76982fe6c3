"""Epoch-based batching over a map-style dataset, reproducible from (seed, epoch) alone.

Each epoch's order is a fresh permutation drawn from its own generator, so the data position
of a run is fully described by its optimizer step: a resumed run rebuilds the same batches
without storing any sampler state. A global batch is split into equal contiguous shares, one
per process, and each share into micro-batches for gradient accumulation.
"""
from __future__ import annotations

import torch


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of epoch ``epoch`` (0-based): a seeded permutation cut into full batches.

    The last partial batch is dropped so every optimizer step sees ``batch_size`` examples and
    every process the same share (a different remainder is dropped each epoch).
    """
    if num_examples < batch_size:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of {batch_size} "
                         "(trainer.total_batch_size)")
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    order = torch.randperm(num_examples, generator=gen).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(num_examples // batch_size)]


def micro_batches(batch: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This process's share of a global batch, cut into micro-batches of ``micro_batch_size``."""
    share = len(batch) // world_size
    mine = batch[rank * share:(rank + 1) * share]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def length_sorted_batches(lengths: list[int], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Evaluation batches of this process's examples (every ``world_size``-th), longest first, so
    that padding to the longest row wastes little work; order does not matter for the metrics."""
    mine = sorted(range(rank, len(lengths), world_size), key=lambda i: -lengths[i])
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
