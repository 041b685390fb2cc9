"""Learning rate: linear warm-up, then step decay (SPEC section 2).

Stateless in the iteration, so a resumed run recomputes exactly the same learning rate.
"""
from typing import Sequence


class WarmupStepSchedule:
    """lr(it) = base_lr * gamma**(number of steps <= it), times a linear warm-up factor that
    goes from ``warmup_ratio`` at iteration 0 to 1 at ``warmup_iters`` (MMCV's "linear").

    Args:
        base_lr: the learning rate after warm-up, before any step.
        steps: iterations at which the lr is multiplied by ``gamma``.
        gamma: decay factor (0.1).
        warmup_iters: length of the warm-up (500).
        warmup_ratio: the warm-up starts at ``base_lr * warmup_ratio`` (1/3).
    """

    def __init__(self, base_lr: float, steps: Sequence[int] = (), gamma: float = 0.1,
                 warmup_iters: int = 500, warmup_ratio: float = 1.0 / 3):
        self.base_lr = base_lr
        self.steps = sorted(int(s) for s in steps)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio

    def lr_at(self, iteration: int) -> float:
        lr = self.base_lr * self.gamma ** sum(1 for s in self.steps if iteration >= s)
        if iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            lr *= 1 - k
        return lr

    def apply(self, optimizer, iteration: int) -> float:
        """Set the lr of every parameter group for ``iteration``; returns it."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "steps": list(self.steps), "gamma": self.gamma,
                "warmup_iters": self.warmup_iters, "warmup_ratio": self.warmup_ratio}
