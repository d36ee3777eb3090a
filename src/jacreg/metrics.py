"""Rates, correlations, aggregation over seeds and the paper's claims C1-C4.

Rates over a labelled set with perturbation v applied as clip(x + v, 0, 1):

- UAP evasion rate: fraction of inputs misclassified, mean[pred(x + v) != y];
- fooling rate: fraction whose prediction changes, mean[pred(x + v) != pred(x)];
- random baseline: the same rates for v with i.i.d. +-eps entries (same L-infinity budget).

Claims (DESIGN §1), per dataset, from seed-averaged rows:

- C1 robustness gain = evasion(lambda=0, eps) / evasion(lambda, eps), maximized over lambda > 0
  and eps ("up to four times"); beside it, the same gain per seed at (lambda*, eps*) (the
  lambda=0 and lambda* models of one seed), as mean +- std over seeds, and the gain per eps at
  the accuracy-preserving lambda: the largest lambda whose mean clean-accuracy drop is at most
  ``max_accuracy_drop``;
- C2 clean-accuracy drop acc(0) - acc(lambda*) at the lambda* of C1 ("maintaining clean
  performance"), also per seed as mean +- std;
- C3 Spearman correlation across models of ||J_X||_2 with the UAP evasion rate at the largest
  eps, and no violation of ||J_X v|| <= ||J_X||_2 ||v||_2 <= ||J_X||_F ||v||_2;
- C4 Pearson correlation across models of the shared-perturbation metric with the UAP evasion
  rate at the largest eps ("highly correlated").

The UAP transfer matrices (one per dataset and seed, :mod:`jacreg.transfer`) are averaged over
seeds by :func:`aggregate_transfer`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, perturbation: torch.Tensor | None = None,
            batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of ``model`` on clip(x + perturbation, 0, 1) (or on x)."""
    device = next(model.parameters()).device
    v = perturbation.to(device) if perturbation is not None else None
    out = []
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


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _per_seed(rows: list[dict[str, Any]]) -> dict[int, dict[tuple[float, float], dict]]:
    """seed -> (lambda, eps) -> row, for one dataset's rows."""
    out: dict[int, dict[tuple[float, float], dict]] = defaultdict(dict)
    for row in rows:
        out[int(row["seed"])][(row["lambda"], row["eps"])] = row
    return dict(sorted(out.items()))


def _drop_std(per_seed: dict[int, dict[tuple[float, float], dict]], lam: float,
              eps: float) -> float | None:
    """Std over seeds of acc_s(0) - acc_s(lam) (the same seed's two models)."""
    drops = [cells[(0.0, eps)]["clean_accuracy"] - cells[(lam, eps)]["clean_accuracy"]
             for cells in per_seed.values() if (0.0, eps) in cells and (lam, eps) in cells]
    return mean_std(drops)[1] if drops else None


def evaluate_claims(rows: list[dict[str, Any]], thresholds: dict[str, float],
                    test_sizes: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Claims C1-C4 per dataset; each: id, dataset, statement, value, threshold, holds, detail."""
    claims: list[dict[str, Any]] = []
    for dataset in sorted({r["dataset"] for r in rows}):
        drows = [r for r in rows if r["dataset"] == dataset]
        lambdas = sorted({r["lambda"] for r in drows})
        epsilons = sorted({r["eps"] for r in drows})
        evasion = seed_summary(drows, "uap_evasion_rate")
        acc = seed_summary(drows, "clean_accuracy")
        floor = 1.0 / (test_sizes or {}).get(dataset, 10_000)
        base = lambdas[0]
        best = (float("nan"), None, None)
        gains = {}
        if base == 0.0 and len(lambdas) > 1:
            for lam in lambdas[1:]:
                for eps in epsilons:
                    attacked = max(evasion[(dataset, lam, eps)][0], floor)
                    gain = evasion[(dataset, 0.0, eps)][0] / attacked
                    gains[f"lambda={lam:g},eps={eps:g}"] = gain
                    if best[1] is None or gain > best[0]:
                        best = (gain, lam, eps)
        gain, lam_star, eps_star = best
        per_seed = _per_seed(drows)
        seed_gains: dict[str, float] = {}
        seed_drops: dict[str, float] = {}
        if lam_star is not None:
            for seed, cells in per_seed.items():
                if (0.0, eps_star) in cells and (lam_star, eps_star) in cells:
                    base_row, reg_row = cells[(0.0, eps_star)], cells[(lam_star, eps_star)]
                    seed_gains[str(seed)] = (base_row["uap_evasion_rate"]
                                             / max(reg_row["uap_evasion_rate"], floor))
                    seed_drops[str(seed)] = (base_row["clean_accuracy"]
                                             - reg_row["clean_accuracy"])
        drops = ({lam: acc[(dataset, 0.0, epsilons[0])][0] - acc[(dataset, lam, epsilons[0])][0]
                  for lam in lambdas} if base == 0.0 else {})
        drop_std = ({lam: _drop_std(per_seed, lam, epsilons[0]) for lam in lambdas}
                    if base == 0.0 else {})
        preserving = [lam for lam in lambdas[1:] if base == 0.0
                      and drops[lam] <= thresholds["max_accuracy_drop"]]
        lam_keep = preserving[-1] if preserving else None
        kept = {"lambda": lam_keep,
                "accuracy_drop": None if lam_keep is None else drops[lam_keep],
                "max_accuracy_drop": thresholds["max_accuracy_drop"],
                "per_eps": ({} if lam_keep is None else
                            {f"{eps:g}": evasion[(dataset, 0.0, eps)][0]
                             / max(evasion[(dataset, lam_keep, eps)][0], floor)
                             for eps in epsilons})}
        gain_mean, gain_std = mean_std(seed_gains.values()) if seed_gains else (None, None)
        claims.append({
            "id": "C1", "dataset": dataset,
            "statement": "Jacobian regularization increases robustness to UAPs by up to 4x",
            "value": _finite(gain), "threshold": thresholds["min_robustness_gain"],
            "holds": bool(lam_star is not None and gain >= thresholds["min_robustness_gain"]),
            "detail": {"lambda": lam_star, "eps": eps_star, "gains": gains,
                       "evasion_floor": floor,
                       "per_seed": {"values": seed_gains, "mean": _finite(gain_mean),
                                    "std": _finite(gain_std)},
                       "gain_at_accuracy_preserving_lambda": kept},
        })
        drop = float("nan") if lam_star is None else drops[lam_star]
        drop_mean, drop_sd = mean_std(seed_drops.values()) if seed_drops else (None, None)
        claims.append({
            "id": "C2", "dataset": dataset,
            "statement": "whilst maintaining clean performance (accuracy drop at the lambda of C1)",
            "value": _finite(drop), "threshold": thresholds["max_accuracy_drop"],
            "holds": bool(lam_star is not None and drop <= thresholds["max_accuracy_drop"]),
            "detail": {"lambda": lam_star,
                       "accuracy_drop_per_lambda": {f"{k:g}": v for k, v in drops.items()},
                       "accuracy_drop_std_per_lambda": {f"{k:g}": v
                                                        for k, v in drop_std.items()},
                       "per_seed": {"values": seed_drops, "mean": _finite(drop_mean),
                                    "std": _finite(drop_sd)}},
        })
        top = [r for r in drows if r["eps"] == epsilons[-1]]
        evasions = [r["uap_evasion_rate"] for r in top]
        rho_spectral = spearman([r["stacked_jacobian_spectral"] for r in top], evasions)
        violations = sum(
            1 for r in drows
            if r["linearized_logit_change"] > r["spectral_bound"] * (1 + 1e-5) + 1e-9
            or r["spectral_bound"] > r["frobenius_bound"] * (1 + 1e-5) + 1e-9
        )
        claims.append({
            "id": "C3", "dataset": dataset,
            "statement": "UAP effectiveness is bounded by norms of data-dependent Jacobians",
            "value": _finite(rho_spectral), "threshold": thresholds["min_correlation"],
            "holds": bool(math.isfinite(rho_spectral)
                          and rho_spectral >= thresholds["min_correlation"] and violations == 0),
            "detail": {"measure": "Spearman(||J_X||_2, UAP evasion rate) across models at eps="
                                  f"{epsilons[-1]:g}", "bound_violations": violations,
                       "pearson": _finite(pearson([r["stacked_jacobian_spectral"] for r in top],
                                                  evasions))},
        })
        shared = [r["shared_metric_mean"] for r in top]
        r_pearson, r_spearman = pearson(shared, evasions), spearman(shared, evasions)
        claims.append({
            "id": "C4", "dataset": dataset,
            "statement": "the shared-perturbation metric is highly correlated with observed "
                         "UAP robustness",
            "value": _finite(r_pearson), "threshold": thresholds["min_correlation"],
            "holds": bool(math.isfinite(r_pearson) and r_pearson >= thresholds["min_correlation"]),
            "detail": {"measure": "Pearson(shared metric mean, UAP evasion rate) across models at "
                                  f"eps={epsilons[-1]:g}", "spearman": _finite(r_spearman),
                       "n_models": len(top)},
        })
    return claims


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

    Each record is one (dataset, seed) output of :func:`jacreg.transfer.compute_transfer`;
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
