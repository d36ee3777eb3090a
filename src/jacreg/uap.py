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

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def take_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for a 1-D index on t's device: ``index_select`` on the CPU (the same copy,
    two to five times faster there), plain indexing elsewhere (slightly faster on CUDA)."""
    return t.index_select(0, idx) if t.device.type == "cpu" else t[idx]


def sgd_uap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            epochs: int = 10, batch_size: int = 128, beta: float = 12.0,
            step_size: float | None = None, target_class: int | None = None,
            seed: int = 0, device: str | torch.device | None = None,
            progress: bool = False) -> torch.Tensor:
    """Craft an L-infinity UAP of budget ``eps`` on ``(x, y)``; returns a tensor shaped like x[0].

    ``step_size`` defaults to 0.8 * eps. Inputs ``x`` are in [0, 1]; ``clip(x + v, 0, 1)`` is
    what the model sees. The model's parameters are left untouched (eval mode, no grad).
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    step = 0.8 * eps if step_size is None else float(step_size)
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    v = torch.zeros((1, *x.shape[1:]), device=device)
    n_batches = (len(x) + batch_size - 1) // batch_size
    try:
        for _ in tqdm(range(epochs), desc=f"sgd-uap eps={eps:g}", disable=not progress):
            order = torch.randperm(len(x), generator=generator)
            order_x, order_y = order.to(x.device), order.to(y.device)
            for b in range(n_batches):
                batch = slice(b * batch_size, (b + 1) * batch_size)
                xb = take_rows(x, order_x[batch]).to(device, non_blocking=True)
                yb = take_rows(y, order_y[batch]).to(device, non_blocking=True)
                v.requires_grad_(True)
                logits = model((xb + v).clamp(0.0, 1.0))
                if target_class is None:
                    loss = F.cross_entropy(logits, yb, reduction="none").clamp(max=beta).mean()
                    direction = 1.0
                else:
                    target = torch.full_like(yb, int(target_class))
                    # no clamp: inputs already at the target have a small loss and gradient
                    loss = F.cross_entropy(logits, target)
                    direction = -1.0
                (grad,) = torch.autograd.grad(loss, v)
                with torch.no_grad():  # v + direction * step * sign(grad), in place: same bits
                    v = v.detach().add_(grad.sign_(), alpha=direction * step).clamp_(-eps, eps)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return v.detach()[0].cpu()
