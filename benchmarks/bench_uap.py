"""SGD-UAP: one attack epoch vs one plain forward + backward pass over the same images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Context, Row, interleaved, ratio_row
from jacreg.models import build_model
from jacreg.uap import sgd_uap

SECTION = "uap"
TARGET = 1.1


def sgd_uap_before(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   batch_size: int, beta: float = 12.0, seed: int = 0) -> torch.Tensor:
    """One untargeted epoch of the loop as first written: a gather with ``x[idx]`` of a CPU
    index and a new tensor for every update of v (jacreg.uap gathers with ``take_rows`` and
    updates v in place; the perturbation is bit-identical)."""
    device = x.device
    step = 0.8 * eps
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    v = torch.zeros((1, *x.shape[1:]), device=device)
    order = torch.randperm(len(x), generator=generator)
    for b in range((len(x) + batch_size - 1) // batch_size):
        idx = order[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        v.requires_grad_(True)
        logits = model((xb + v).clamp(0.0, 1.0))
        loss = F.cross_entropy(logits, yb, reduction="none").clamp(max=beta).mean()
        (grad,) = torch.autograd.grad(loss, v)
        with torch.no_grad():
            v = (v + 1.0 * step * grad.sign()).clamp(-eps, eps)
    for p in params:
        p.requires_grad_(True)
    return v.detach()[0].cpu()


def run(ctx: Context) -> list[Row]:
    configs = [("cnn_small", 1, 28, 512 if ctx.quick else 2000)]
    if not ctx.quick:
        configs.append(("cnn", 1, 28, 10_000 if ctx.cuda else 2000))
    if ctx.cuda:
        configs.append(("resnet18", 3, 32, 10_000))
    return [row for arch, channels, size, n in configs
            for row in _one(ctx, arch, channels, size, n)]


def _one(ctx: Context, arch: str, channels: int, size: int, n: int) -> list[Row]:
    batch = 128
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=10, image_size=size)
    model = model.to(ctx.device).eval()
    gen = torch.Generator().manual_seed(0)
    # on the attack device, as `jacreg attack` passes them
    x = torch.rand((n, channels, size, size), generator=gen).to(ctx.device)
    y = torch.randint(0, 10, (n,), generator=gen).to(ctx.device)
    batches = [(x[s:s + batch], y[s:s + batch]) for s in range(0, n, batch)]
    params = [p for p in model.parameters() if p.requires_grad]

    def plain_pass() -> None:
        # the least an attack epoch must do: forward and backward to the input, per batch
        for p in params:
            p.requires_grad_(False)
        try:
            for xb, yb in batches:
                xr = xb.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xr), yb), xr)
        finally:
            for p in params:
                p.requires_grad_(True)

    outputs: dict[str, torch.Tensor] = {}

    def attack_epoch() -> None:
        outputs["now"] = sgd_uap(model, x, y, eps=0.1, epochs=1, batch_size=batch, seed=0,
                                 device=ctx.device)

    def attack_epoch_before() -> None:
        outputs["before"] = sgd_uap_before(model, x, y, eps=0.1, batch_size=batch, seed=0)

    ctx.log(f"  sgd-uap epoch {arch} {channels}x{size}x{size}, {n} images, batch {batch}")
    samples = interleaved({"plain fwd+bwd pass": plain_pass, "SGD-UAP epoch": attack_epoch,
                           "SGD-UAP epoch (before)": attack_epoch_before},
                          ctx.device, ctx.repeats if ctx.quick else 7, warmup=1)
    label = f"{arch} {size}x{size} n={n}"
    same = bool(torch.equal(outputs["now"], outputs["before"]))
    details = {"images": n, "batch": batch, "bit_identical_to_before": same}
    return [
        ratio_row(SECTION, f"SGD-UAP epoch vs plain pass, {label}", samples, "SGD-UAP epoch",
                  "plain fwd+bwd pass", target=TARGET,
                  note="plain pass: same images and batches, frozen weights, input gradient",
                  details=details),
        ratio_row(SECTION, f"SGD-UAP epoch vs the loop before, {label}", samples,
                  "SGD-UAP epoch", "SGD-UAP epoch (before)",
                  note="same perturbation, bit for bit" if same else "PERTURBATIONS DIFFER",
                  details=details),
    ]
