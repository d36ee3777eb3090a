"""Training with the Jacobian regularizer, resumable after every epoch.

Loss (Co et al., ICANN 2021; Hoffman et al., arXiv:1908.02729)::

    L = CE(f(x), y) + lambda * 1/2 * mean_b ||J(x_b)||_F^2

The dataset lives as one tensor on the training device and batches are drawn by index from a
seeded permutation: no DataLoader workers, no per-sample transforms on the hot path. After every
epoch a resumable state (model, optimizer, RNG states, epoch, history) is written atomically
next to the checkpoint; a restarted job resumes from it and ends with the numbers of an
uninterrupted run (bit-identical on the CPU with the same thread count).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jacreg import runtime
from jacreg.data import DatasetSpec
from jacreg.io import load_torch, save_torch
from jacreg.jacobian import jacobian_penalty
from jacreg.models import architecture_kwargs, build_model, check_logits
from jacreg.uap import take_rows

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite: the run is stopped before anything is saved."""


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation on a batch tensor: zero-pad, random crop back to size, random h-flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def index_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(xb, yb)`` batches drawn by index from a seeded permutation.

    The permutation comes from ``generator`` on the CPU (the same order on every device) and is
    moved to x's device once; each batch is one gather there (``take_rows``: the same copy as
    ``x[idx]``, faster on the CPU). No DataLoader, no workers.
    """
    order = torch.randperm(len(x), generator=generator)
    order_x, order_y = order.to(x.device), order.to(y.device)
    for start in range(0, len(x), batch_size):
        batch = slice(start, start + batch_size)
        yield take_rows(x, order_x[batch]), take_rows(y, order_y[batch])


def make_optimizer(model: nn.Module, settings: dict[str, Any]) -> torch.optim.Optimizer:
    if settings["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings["lr"],
                                weight_decay=settings.get("weight_decay", 0.0))
    return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9, nesterov=True,
                           weight_decay=settings.get("weight_decay", 0.0))


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {name: g.get_state() for name, g in generators.items()}
    state["torch_cpu"] = torch.get_rng_state()
    return state


def _restore_rng(generators: dict[str, torch.Generator], state: dict[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch_cpu"])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
               yb: torch.Tensor, lam: float, n_proj: int = 1,
               generator: torch.Generator | None = None,
               params: list[torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One optimizer step on the batch ``(xb, yb)``: CE, plus ``lam`` times the Jacobian penalty.

    Returns the detached ``(loss, cross_entropy, penalty or None, logits)``. The backward pass
    asks only for the gradients of ``params`` (default: the trainable parameters of ``model``).
    With ``lam > 0`` the batch requires grad for the penalty, and a plain ``loss.backward()``
    would also compute the unused gradient w.r.t. the input batch: one more input-gradient pass
    through the first layer, about a tenth of a JR step on the CPU (docs/performance.md). The
    parameter gradients are bit-identical either way.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    if lam > 0:
        xb = xb.clone().requires_grad_(True)
    logits = model(xb)
    ce = F.cross_entropy(logits, yb)
    loss = ce
    penalty = None
    if lam > 0:
        penalty = jacobian_penalty(xb, logits, n_proj=n_proj, generator=generator)
        loss = ce + lam * penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()
    return (loss.detach(), ce.detach(), None if penalty is None else penalty.detach(),
            logits.detach())


def train_model(x: torch.Tensor, y: torch.Tensor, spec: DatasetSpec, settings: dict[str, Any],
                lam: float, seed: int, device: torch.device,
                state_path: str | Path | None = None,
                progress: bool = True) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``settings['architecture']`` (with ``settings['arch_kwargs']``, if any) on
    ``(x, y)`` (floats in [0, 1]) with strength ``lam``.

    Returns the model (eval mode) and one history entry per epoch.

    Batch-coupled layers: the penalty is taken in train mode, on the same forward pass as the
    cross-entropy. With BatchNorm, the batch statistics depend on every input of the batch, so
    the vector-Jacobian product of sample b also carries the O(1/B) terms through the other
    samples' normalization; with Dropout it is the Jacobian of the sub-network of that step's
    mask. The analysis and the attacks measure the eval-mode model (docs/custom.md).
    """
    torch.manual_seed(seed)
    arch_kwargs = architecture_kwargs(spec.channels, spec.num_classes, spec.image_size,
                                      settings.get("arch_kwargs"))
    model = build_model(settings["architecture"], origin="config key 'train.architecture'",
                        **arch_kwargs).to(device)
    check_logits(model, spec.channels, spec.height, spec.width, spec.num_classes,
                 f"train.architecture {settings['architecture']!r} on {spec.name}")
    optimizer = make_optimizer(model, settings)
    if settings.get("schedule", "constant") == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings["epochs"]))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)
    generators = {"order": torch.Generator().manual_seed(seed),
                  "projection": torch.Generator().manual_seed(seed + 1_000_003),
                  "augment": torch.Generator().manual_seed(seed + 2_000_003)}
    history: list[dict[str, float]] = []
    start_epoch = 0
    # what a resumable state must match: everything but the epoch count, which may grow
    # under a constant schedule (cosine annealing depends on it)
    fingerprint = json.dumps({"settings": {k: v for k, v in settings.items() if k != "epochs"},
                              "lambda": float(lam), "seed": int(seed), "n": len(x)},
                             sort_keys=True)
    state = None
    if state_path is not None and Path(state_path).exists():
        state = load_torch(state_path)
        same_run = state.get("fingerprint") == fingerprint and (
            state.get("epochs") == settings["epochs"]
            or (settings.get("schedule", "constant") == "constant"
                and int(state["epoch"]) <= settings["epochs"]))
        if not same_run:
            log.warning("ignoring %s: it was written with other settings, lambda, seed or data; "
                        "training from scratch", state_path)
            state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(generators, state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming from %s at epoch=%d/%d", state_path, start_epoch, settings["epochs"])

    x, y = x.to(device), y.to(device)
    batch_size, n = settings["batch_size"], len(x)
    n_proj = settings["n_proj"]
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, settings["epochs"]):
        model.train()
        started = time.perf_counter()
        sums = {"loss": 0.0, "cross_entropy": 0.0, "jacobian_penalty": 0.0, "correct": 0.0}
        batches = index_batches(x, y, batch_size, generators["order"])
        for xb, yb in runtime.progress(batches, total=(n + batch_size - 1) // batch_size,
                                       desc=f"epoch {epoch + 1}/{settings['epochs']}",
                                       disable=not progress, every=0.25):
            if settings.get("augment"):
                xb = random_crop_flip(xb, generators["augment"])
            loss, ce, penalty, logits = train_step(model, optimizer, xb, yb, lam, n_proj,
                                                   generators["projection"], params)
            if penalty is not None:
                sums["jacobian_penalty"] += float(penalty) * len(yb)
            sums["loss"] += float(loss) * len(yb)
            sums["cross_entropy"] += float(ce) * len(yb)
            sums["correct"] += float((logits.argmax(1) == yb).sum())
        scheduler.step()
        entry = {"epoch": epoch + 1, "seconds": time.perf_counter() - started,
                 **{k: v / n for k, v in sums.items() if k != "correct"},
                 "train_accuracy": sums["correct"] / n}
        history.append(entry)
        log.info("epoch=%d loss=%.4f ce=%.4f penalty=%.4f train_acc=%.4f seconds=%.1f",
                 entry["epoch"], entry["loss"], entry["cross_entropy"],
                 entry["jacobian_penalty"], entry["train_accuracy"], entry["seconds"])
        if not all(math.isfinite(entry[k]) for k in ("loss", "cross_entropy", "jacobian_penalty")):
            raise TrainingDivergedError(
                f"training diverged in epoch {entry['epoch']} (loss={entry['loss']}, "
                f"penalty={entry['jacobian_penalty']}) at lambda={lam:g}, seed={seed}; lower "
                "train.lr (or use optimizer: adam) for this dataset; no checkpoint was written"
            )
        if state_path is not None:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": _rng_state(generators),
                        "history": history, "epoch": epoch + 1,
                        "fingerprint": fingerprint, "epochs": settings["epochs"]}, state_path)
    return model.eval(), history
