"""Causal-LM loss as a (sum, count) pair, so means over micro-batches, ranks and evaluation
batches are exact per-token means (sum of token losses / number of tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gwt_lab.constants import IGNORE_INDEX


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of predicted tokens: label positions 1..L-1 that are not -100 (position 0 is never a target)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of next-token cross-entropies in fp32, number of target tokens)``.

    ``logits``: (B, L, V); ``labels``: (B, L) with -100 where no loss is taken. Token ``t``
    predicts label ``t+1`` (the same shift as ``LlamaForCausalLM``'s own loss).
    """
    vocab = logits.shape[-1]
    # Shift the labels, not the logits: slicing (B, L, V) logits would make autograd allocate and
    # fill a full-size zero gradient; the last position gets label -100 instead.
    next_labels = torch.full_like(labels, IGNORE_INDEX, device=logits.device)  # (B, L)
    next_labels[:, :-1] = labels[:, 1:]
    loss_sum = F.cross_entropy(logits.reshape(-1, vocab).float(), next_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (next_labels != IGNORE_INDEX).sum()
