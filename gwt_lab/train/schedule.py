"""Learning-rate schedules as picklable multipliers for ``torch.optim.lr_scheduler.LambdaLR``.

Two shapes are used in the paper's protocol:
- ``cosine``: linear warm-up from 0 over ``warmup_steps``, then cosine decay from 1 to
  ``min_lr_ratio`` (0.1 for LLaMA pre-training, Appendix A.1 / GaLore protocol) at ``total_steps``.
- ``linear``: optional linear warm-up, then linear decay to ``min_lr_ratio`` (0.0 for GLUE
  fine-tuning, which uses no warm-up).
- ``constant``: optional warm-up, then 1.

The multipliers are small dataclasses rather than lambdas so that ``LambdaLR.state_dict()``
records their parameters and a resumed run can check it builds the same schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULE_NAMES = ("cosine", "linear", "constant")


def _warmup_factor(step: int, warmup_steps: int) -> float:
    # step 0 gets lr 0, as in the released GaLore/GWT scripts.
    return step / max(1, warmup_steps)


@dataclass
class WarmupCosine:
    """Multiplier: ``step/warmup`` during warm-up, then ``min + (1-min) * 0.5 * (1 + cos(pi * p))``."""

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


@dataclass
class WarmupLinear:
    """Multiplier: ``step/warmup`` during warm-up, then linear from 1 to ``min_lr_ratio`` at ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        return 1.0 - (1.0 - self.min_lr_ratio) * progress


@dataclass
class WarmupConstant:
    """Multiplier: ``step/warmup`` during warm-up, then 1."""

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        return 1.0


_SCHEDULES = {"cosine": WarmupCosine, "linear": WarmupLinear, "constant": WarmupConstant}


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float | None = None):
    """Return the multiplier callable for schedule ``kind`` (one of ``SCHEDULE_NAMES``).

    ``min_lr_ratio=None`` takes the shape's default (cosine 0.1, linear 0.0).
    Raises ``ValueError`` naming the bad value and the valid choices.
    """
    if kind not in _SCHEDULES:
        raise ValueError(f"scheduler={kind!r} is not a known learning-rate schedule; choose one of {list(SCHEDULE_NAMES)}")
    if int(total_steps) < 1:
        raise ValueError(f"total_steps={total_steps!r} must be >= 1 (config key trainer.max_steps)")
    if not 0 <= int(warmup_steps) <= int(total_steps):
        raise ValueError(f"warmup_steps={warmup_steps!r} must be between 0 and total_steps={total_steps}")
    kwargs = {"total_steps": int(total_steps), "warmup_steps": int(warmup_steps)}
    if min_lr_ratio is not None:
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio!r} must lie in [0, 1]")
        kwargs["min_lr_ratio"] = float(min_lr_ratio)
    return _SCHEDULES[kind](**kwargs)


def build_scheduler(optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int = 0,
                    min_lr_ratio: float | None = None) -> LambdaLR:
    """A ``LambdaLR`` over every parameter group of ``optimizer`` with the multiplier of ``lr_multiplier``.

    Call ``scheduler.step()`` once after each optimizer step; the lr used at optimizer step ``s``
    (0-based) is ``base_lr * multiplier(s)``.
    """
    return LambdaLR(optimizer, lr_multiplier(kind, total_steps, warmup_steps, min_lr_ratio))


def warmup_steps_from(total_steps: int, warmup_steps: int | None = None, warmup_ratio: float = 0.0) -> int:
    """Warm-up length: ``warmup_steps`` when given (not None), else ``int(warmup_ratio * total_steps)``."""
    if warmup_steps is not None:
        return int(warmup_steps)
    if not 0.0 <= float(warmup_ratio) <= 1.0:
        raise ValueError(f"warmup_ratio={warmup_ratio!r} must lie in [0, 1] (config key trainer.warmup_ratio)")
    return int(float(warmup_ratio) * int(total_steps))
