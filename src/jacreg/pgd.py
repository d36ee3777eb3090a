"""PGD: a per-input L-infinity attack, the contrast to the universal perturbation.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. Every input x gets its own perturbation: from a uniformly random start in
the eps ball, ``steps`` sign-gradient ascent steps on the cross-entropy,

    x' <- Proj_{B_inf(x, eps) ∩ [0,1]^d} ( x' + step * sign(grad_x' CE(f(x'), y)) ),

with step = 2.5 * eps / steps by default (so the iterate can cross the ball 1.25 times). The
final iterate is returned. Untargeted; the model's weights are frozen (eval mode, no grad).

A UAP is one v for all inputs; PGD is the strongest first-order attack per input. Comparing the
two evasion rates per lambda shows whether Jacobian regularization helps more against universal
perturbations than against per-input ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
               step_size: float | None = None, seed: int = 0, batch_size: int = 250,
               device: str | torch.device | None = None) -> torch.Tensor:
    """Adversarial versions of ``x`` (on the CPU, same shape): L-inf PGD with a random start.

    ``x`` is in [0, 1]; every output lies in [0, 1] and within ``eps`` of its input in
    L-infinity. ``step_size`` defaults to 2.5 * eps / steps. The random start is drawn on the
    CPU from a generator seeded with ``seed``, batch after batch, so the result does not depend
    on the device's random number generator.
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    step = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    generator = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            noise = torch.rand(xb.shape, generator=generator, dtype=xb.dtype) * (2 * eps) - eps
            xb, yb = xb.to(device), y[start:start + batch_size].to(device)
            lower, upper = (xb - eps).clamp_(min=0.0), (xb + eps).clamp_(max=1.0)
            adv = torch.maximum(torch.minimum(xb + noise.to(device), upper), lower)
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv.detach().add_(grad.sign_(), alpha=step)
                    adv = torch.maximum(torch.minimum(adv, upper), lower)
            out.append(adv.detach().cpu())
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    if not out:
        return x.detach().clone().cpu()
    return torch.cat(out)
