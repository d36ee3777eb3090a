"""SGD-UAP: universal adversarial perturbations by stochastic projected gradient ascent.

Shafahi, Najibi, Xu, Dickerson, Davis & Goldstein, "Universal Adversarial Training", AAAI 2020.
One perturbation v shared by all inputs maximizes the clamped loss

    max_{||v||_inf <= eps}  mean_b min(CE(f(clip(x_b + v, 0, 1)), y_b), beta)

with sign steps v <- v + step * sign(grad_v) and projection onto the L-infinity ball. The clamp at
beta keeps inputs that are already fooled from dominating the update. A targeted UAP instead
minimizes the (unclamped) CE towards ``target_class`` (v <- v - step * sign(grad_v)).

The perturbation is broadcast over the batch (shape (1, C, H, W)), so one step costs one forward
and one backward pass (to the input only: the weights are frozen).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from jacreg.runtime import progress as progress_bar


def take_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for a 1-D index on t's device: ``index_select`` on the CPU (the same copy,
    two to five times faster there), plain indexing elsewhere (slightly faster on CUDA)."""
    return t.index_select(0, idx) if t.device.type == "cpu" else t[idx]


UAP_FORMAT = "jacreg-uaps-v2"  # uaps / strong_uaps: (replicates, eps, C, H, W)


def replicate_uaps(payload: dict, key: str = "uaps") -> torch.Tensor:
    """The perturbations ``payload[key]`` of a UAP file as (R, E, C, H, W): R attack replicates
    (``attack.replicates``) by E budgets. Files written before replicates existed hold one run,
    (E, C, H, W), and read as R = 1."""
    uaps = payload[key]
    return uaps if uaps.dim() == 5 else uaps.unsqueeze(0)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per input: max_{j != y} z_j - z_y (positive iff misclassified)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(1).values - true


def sgd_uap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            epochs: int = 10, batch_size: int = 128, beta: float = 12.0,
            step_size: float | None = None, target_class: int | None = None,
            seed: int = 0, device: str | torch.device | None = None,
            progress: bool = False) -> torch.Tensor:
    """Craft an L-infinity UAP of budget ``eps`` on ``(x, y)``; returns a tensor shaped like x[0].

    The authors' algorithm: zero start, constant sign step ``step_size`` (default 0.8 * eps),
    the last iterate. ``x`` is in [0, 1]; ``clip(x + v, 0, 1)`` is what the model sees. The
    model's parameters are left untouched (eval mode, no grad).
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    step = 0.8 * eps if step_size is None else float(step_size)
    return sgd_uap_run(model, x, y, eps, start=None, epochs=epochs, batch_size=batch_size,
                       beta=beta, step_at=lambda _t: step, target_class=target_class,
                       seed=seed, device=device, progress=progress)


def sgd_uap_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                start: torch.Tensor | None, epochs: int, batch_size: int, beta: float,
                step_at: Callable[[float], float], target_class: int | None = None,
                seed: int = 0, device: str | torch.device | None = None,
                progress: bool = False,
                on_epoch: Callable[[int, torch.Tensor], None] | None = None,
                loss: str = "ce") -> torch.Tensor:
    """SGD-UAP from ``start`` (None: zeros) with step ``step_at(t)``, t in [0, 1) the fraction
    of the run done; ``on_epoch(epoch, v)`` sees each epoch's last iterate (on the device).
    ``loss``: "ce" (cross-entropy clamped at ``beta``, the paper's) or "margin" (the largest
    other logit minus the true one, clamped at 0: inputs already misclassified stop pulling;
    Carlini & Wagner, IEEE S&P 2017). Returns the last iterate on the CPU."""
    if loss not in ("ce", "margin"):
        raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    if start is None:
        v = torch.zeros((1, *x.shape[1:]), device=device)
    else:
        v = start.reshape(1, *x.shape[1:]).to(device, torch.float32).clamp(-eps, eps)
    n_batches = (len(x) + batch_size - 1) // batch_size
    total = max(epochs * n_batches, 1)
    try:
        for epoch in progress_bar(range(epochs), desc=f"sgd-uap eps={eps:g}",
                                  disable=not progress, every=1.0):
            order = torch.randperm(len(x), generator=generator)
            order_x, order_y = order.to(x.device), order.to(y.device)
            for b in range(n_batches):
                step = step_at((epoch * n_batches + b) / total)
                batch = slice(b * batch_size, (b + 1) * batch_size)
                xb = take_rows(x, order_x[batch]).to(device, non_blocking=True)
                yb = take_rows(y, order_y[batch]).to(device, non_blocking=True)
                v.requires_grad_(True)
                logits = model((xb + v).clamp(0.0, 1.0))
                if target_class is not None:
                    target = torch.full_like(yb, int(target_class))
                    # no clamp: inputs already at the target have a small loss and gradient
                    objective = F.cross_entropy(logits, target)
                    direction = -1.0
                elif loss == "ce":
                    objective = F.cross_entropy(logits, yb,
                                                reduction="none").clamp(max=beta).mean()
                    direction = 1.0
                else:
                    objective = margin_loss(logits, yb).clamp(max=0.0).mean()
                    direction = 1.0
                (grad,) = torch.autograd.grad(objective, v)
                with torch.no_grad():  # v + direction * step * sign(grad), in place: same bits
                    v = v.detach().add_(grad.sign_(), alpha=direction * step).clamp_(-eps, eps)
            if on_epoch is not None:
                on_epoch(epoch, v.detach())
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return v.detach()[0].cpu()
