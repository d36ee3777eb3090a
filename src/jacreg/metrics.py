"""Rates, correlations and aggregation over seeds.

Rates over a labelled set with perturbation v applied as clip(x + v, 0, 1):

- UAP evasion rate: fraction of inputs misclassified, mean[pred(x + v) != y];
- fooling rate: fraction whose prediction changes, mean[pred(x + v) != pred(x)];
- random baseline: the same rates for v with i.i.d. +-eps entries (same L-infinity budget).

The paper's claims C1-C4 live in :mod:`jacreg.claims`, their bootstrap intervals in
:mod:`jacreg.bootstrap`.

The UAP transfer matrices (one per dataset and seed, :mod:`jacreg.attack_suite`) are averaged over
seeds by :func:`aggregate_transfer`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from jacreg.models import eval_mode


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, perturbation: torch.Tensor | None = None,
            batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of ``model`` (in eval mode) on clip(x + perturbation, 0, 1) (or on x)."""
    device = next(model.parameters()).device
    v = perturbation.to(device) if perturbation is not None else None
    out = []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            if v is not None:
                xb = (xb + v).clamp_(0.0, 1.0)
            out.append(model(xb).argmax(1).cpu())
    return torch.cat(out)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean())


def uap_evasion_rate(adversarial_predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of inputs misclassified under the perturbation."""
    return float((adversarial_predictions != labels).float().mean())


def uap_fooling_rate(clean_predictions: torch.Tensor,
                     adversarial_predictions: torch.Tensor) -> float:
    """Fraction of inputs whose predicted class the perturbation changes."""
    return float((adversarial_predictions != clean_predictions).float().mean())


def random_sign_perturbation(shape: Sequence[int], eps: float,
                             generator: torch.Generator) -> torch.Tensor:
    """v with i.i.d. entries +-eps: the random baseline of the same L-infinity budget."""
    signs = torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1
    return signs * eps


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or fewer than 3 points."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if len(x) < 3 or float(x.std()) == 0 or float(y.std()) == 0:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks)."""
    return pearson(_ranks(list(a)), _ranks(list(b)))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    vals = list(values)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


SummaryKey = tuple[str, float, float]


def seed_summary(rows: list[dict[str, Any]], key: str) -> dict[SummaryKey, tuple[float, float]]:
    """(dataset, lambda, eps) -> (mean, std over seeds) of ``key``."""
    groups: dict[tuple[str, float, float], list[float]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["lambda"], row["eps"])].append(row[key])
    return {k: mean_std(v) for k, v in groups.items()}


def evasion_curve_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed-averaged headline curve: one record per (dataset, lambda, eps), for DVC plots."""
    evasion = seed_summary(rows, "uap_evasion_rate")
    accuracy_ = seed_summary(rows, "clean_accuracy")
    return [
        {"dataset": key[0], "lambda": key[1], "eps": key[2],
         "uap_evasion_rate_mean": mean, "uap_evasion_rate_std": std,
         "clean_accuracy_mean": accuracy_[key][0]}
        for key, (mean, std) in sorted(evasion.items())
    ]


def aggregate_transfer(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: the transfer matrices of all seeds and their mean and std over seeds.

    Each record is one (dataset, seed) summary of :func:`jacreg.attack_suite.evaluate_suite`;
    records of one dataset must share the lambda list and the eps.
    """
    out: dict[str, Any] = {}
    for dataset in sorted({r["dataset"] for r in records}):
        recs = sorted((r for r in records if r["dataset"] == dataset), key=lambda r: r["seed"])
        lambdas, eps = recs[0]["lambdas"], recs[0]["eps"]
        for r in recs[1:]:
            if r["lambdas"] != lambdas or not math.isclose(r["eps"], eps, rel_tol=1e-9):
                raise ValueError(f"transfer records of {dataset} disagree on lambdas or eps: "
                                 f"seed {r['seed']} has {r['lambdas']}, eps={r['eps']}")
        n = len(lambdas)
        stats = [[mean_std([r["matrix"][a][b] for r in recs]) for b in range(n)]
                 for a in range(n)]
        out[dataset] = {
            "eps": eps, "lambdas": lambdas, "seeds": [int(r["seed"]) for r in recs],
            "rows": "source: the lambda the UAP was crafted on",
            "columns": "target: the lambda of the model it is applied to",
            "matrix_mean": [[m for m, _ in line] for line in stats],
            "matrix_std": [[s for _, s in line] for line in stats],
            "per_seed": {str(r["seed"]): r["matrix"] for r in recs},
        }
    return out
