"""The training objective: the action losses (each with its name), the training form of a batch,
AdamW with its lr schedule, and one optimisation step.

    sample K-step windows -> training_form -> burn-in mask -> predict actions -> the model's loss
    -> AdamW step
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dema_lab.training.config import OptimConfig


def masked_mse(pred, target, mask):
    """Mean squared error over the real (unpadded) steps. pred, target (b, K, a); mask (b, K)."""
    err = ((pred - target) ** 2).sum(-1)  # (b, K)
    return (err * mask).sum() / (mask.sum().clamp_min(1) * target.shape[-1])


def masked_cross_entropy(logits, target, mask):
    """Cross-entropy over the real (unpadded) steps, for discrete actions. logits (b, K, n_actions);
    target (b, K, 1) action indices; mask (b, K)."""
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), target[..., 0].round().long(), reduction="none"
    )  # (b, K)
    return (nll * mask).sum() / mask.sum().clamp_min(1)


@dataclass(frozen=True)
class Loss:
    """A training loss and how the logged metric names it."""

    fn: Callable
    long_name: str
    units: str

    def __call__(self, pred, target, mask):
        return self.fn(pred, target, mask)


MSE = Loss(masked_mse, "masked action MSE", "action units squared")
CROSS_ENTROPY = Loss(masked_cross_entropy, "masked action cross-entropy", "nats")


def loss_for(model_cfg) -> Loss:
    """The training loss of a model: masked MSE for continuous actions, masked cross-entropy for
    discrete ones (Atari)."""
    return CROSS_ENTROPY if model_cfg.discrete else MSE


def lr_factor(optim: OptimConfig, step: int) -> float:
    """lr / optim.lr at optimiser step `step` (0-based): a linear warm-up over warmup_steps, then
    constant, or the official Atari trainer's cosine (atari/mingpt/trainer_atari.py, in steps rather
    than tokens): max(0.1, (1 + cos(pi p)) / 2) with p going from 0 after the warm-up to 1 at
    lr_decay_steps. As there, p is not clipped: past lr_decay_steps the cosine rises again above
    its 10% floor (the official 10 epochs run to p of about 1.7)."""
    warmup = max(1, optim.warmup_steps)
    if step + 1 < warmup or optim.lr_schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    end = optim.lr_decay_steps or optim.steps
    progress = (step + 1 - warmup) / max(1, end - warmup)
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model, optim: OptimConfig):
    """AdamW with linear warm-up. Weight decay on matrices only (no decay on biases, norms, A_log
    and D), or with decay_all on every parameter, as the official DeMa trainer does."""
    decay, no_decay = [], []
    for p in model.parameters():
        matrix = optim.decay_all or not (p.dim() < 2 or getattr(p, "_no_weight_decay", False))
        (decay if matrix else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(optim, step))
    return opt, sched


def training_form(batch: dict, rtg_form: str = "current") -> dict:
    """The model's inputs and targets for a batch of K-step windows.

    current:  step t is (R_t, s_t, a_t) or (R_t, a_{t-1}, s_t), as at evaluation; K predictions.
    previous: the official DeMa trainer's form (`del_r`): step t is (R_{t-1}, a_{t-1}, s_t) with
              step t-1's timestep, for t = 1..K-1 of the window; K-1 predictions of a_1..a_{K-1}.
    """
    if rtg_form == "current":
        return batch
    if rtg_form != "previous":
        raise ValueError(f"rtg_form must be 'current' or 'previous', got {rtg_form!r}")
    return {
        "states": batch["states"][:, 1:],
        "actions": batch["actions"][:, 1:],
        "returns_to_go": batch["returns_to_go"][:, :-1],
        "timesteps": batch["timesteps"][:, :-1],
        "mask": batch["mask"][:, 1:],
        "prev_action": batch["actions"][:, 0],
    }


def burn_in_mask(mask, burn_in: int):
    """The loss mask (b, T) with the first `burn_in` steps of every window off: those steps still go
    through the model (they warm its state up), but their predictions are not trained on."""
    if burn_in <= 0:
        return mask
    out = mask.clone()
    out[:, :burn_in] = 0
    return out


def train_step(
    model, batch, opt, sched, grad_clip: float, rtg_form: str = "current", burn_in: int = 0
) -> tuple[float, float]:
    """One optimisation step on a batch of windows with the model's loss (no loss on the first
    `burn_in` steps of each window, as they are given to the model); returns (loss, grad norm)."""
    model.train()
    batch = training_form(batch, rtg_form)
    batch = {**batch, "mask": burn_in_mask(batch["mask"], burn_in)}
    pred = model(
        batch["states"],
        batch["actions"],
        batch["returns_to_go"],
        batch["timesteps"],
        prev_action=batch.get("prev_action"),
    )
    loss = loss_for(model.cfg)(pred, batch["actions"], batch["mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss.item(), float(gnorm)
