"""Aggregation of one run into ``metrics.json`` (DESIGN §3).

Merges the per-model evaluations (:mod:`jacreg.evaluate`) with the attack suite of each
(dataset, seed) (:mod:`jacreg.attack_suite`) into one row per (dataset, lambda, seed, eps);
runs the attack sanity checks (:mod:`jacreg.attack_checks`); computes claims C1-C4 with the
paper's attack and with the worst case (:mod:`jacreg.claims`); and attaches hierarchical
bootstrap intervals (:mod:`jacreg.bootstrap`) to every seed-averaged rate, gain and claim.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jacreg.attack_checks import model_checks
from jacreg.bootstrap import (
    SeedOutcomes,
    finite_or_none,
    percentile_interval,
    replicate_rates,
)
from jacreg.claims import attach_verdicts, claim_values, evaluate_claims
from jacreg.metrics import aggregate_transfer

log = logging.getLogger(__name__)

ATTACKS = {"paper": "uap_evasion_rate", "worst": "worst_uap_evasion_rate"}
BOOTSTRAP_DEFAULTS = {"samples": 1000, "seed": 0}


def merge_suite(rows: list[dict[str, Any]], suites: Sequence[Mapping[str, Any]]) -> None:
    """Add each member's rates, the worst case and the transfer summary to the rows, in place."""
    index = {(s["dataset"], int(s["seed"]), float(m["lambda"]), float(rec["eps"])): rec
             for s in suites for m in s["models"] for rec in m["per_eps"]}
    for row in rows:
        rec = index.get((row["dataset"], int(row["seed"]), float(row["lambda"]),
                         float(row["eps"])))
        if rec is None:
            raise ValueError(f"no attack-suite record for dataset={row['dataset']} "
                             f"lambda={row['lambda']} seed={row['seed']} eps={row['eps']}")
        tests, attacks = rec["test_rates"], rec["attack_rates"]
        transfers = [m for m in tests if m.startswith("transfer:")]
        best_transfer = max(transfers, key=lambda m: attacks[m]) if transfers else None
        row.update({
            "strong_uap_evasion_rate": tests.get("strong"),
            "transfer_uap_evasion_rate": tests[best_transfer] if best_transfer else None,
            "transfer_uap_source": best_transfer,
            "worst_uap_evasion_rate": tests[rec["worst"]],
            "worst_uap_member": rec["worst"],
            "member_evasion_rates": dict(tests),
            "member_attack_split_rates": dict(attacks),
        })


def sanity_checks(rows: list[dict[str, Any]],
                  suites: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The attack checks of every model: ``{dataset, lambda, seed, checks: [...]}``."""
    random_rates: dict[tuple, dict[float, float]] = {}
    for row in rows:
        key = (row["dataset"], float(row["lambda"]), int(row["seed"]))
        random_rates.setdefault(key, {})[float(row["eps"])] = row["random_evasion_rate"]
    out = []
    for suite in suites:
        for model in suite["models"]:
            key = (suite["dataset"], float(model["lambda"]), int(suite["seed"]))
            out.append({"dataset": key[0], "lambda": key[1], "seed": key[2],
                        "checks": model_checks(model["per_eps"], random_rates.get(key, {}),
                                               model.get("large_budget_check"),
                                               int(suite["n_test"]))})
    return sorted(out, key=lambda c: (c["dataset"], c["lambda"], c["seed"]))


def _seed_cells(outcomes: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Cells of one seed: clean-correct per lambda, then paper and worst evaded per (lambda,
    eps), as a (L + 2 L E, n) 0/1 array."""
    clean = outcomes["clean_correct"].numpy()
    paper = outcomes["paper_evaded"].numpy()
    worst = outcomes["worst_evaded"].numpy()
    n_l, n_e, n = paper.shape
    return np.concatenate([clean, paper.reshape(n_l * n_e, n), worst.reshape(n_l * n_e, n)])


def bootstrap_dataset(dataset: str, rows: list[dict[str, Any]],
                      outcomes: Mapping[int, Mapping[str, torch.Tensor]], samples: int,
                      rng_seed: int) -> dict[str, Any]:
    """Intervals of one dataset: rates and clean accuracy per cell, gains, and claim values
    per attack, from the hierarchical bootstrap over its seeds and test inputs."""
    seeds = sorted(outcomes)
    first = outcomes[seeds[0]]
    lams = [float(v) for v in first["lambdas"]]
    eps = [float(v) for v in first["eps"]]
    n_l, n_e = len(lams), len(eps)
    n_test = first["clean_correct"].shape[1]
    floor = 1.0 / n_test
    draws, rates = replicate_rates([SeedOutcomes(s, _seed_cells(outcomes[s])) for s in seeds],
                                   samples, rng_seed)
    per_model = {(int(r["seed"]), float(r["lambda"])): r for r in rows
                 if r["dataset"] == dataset}
    clean = rates[:, :, :n_l]  # (B, S, L)
    evaded = {"paper": rates[:, :, n_l:n_l + n_l * n_e].reshape(samples, -1, n_l, n_e),
              "worst": rates[:, :, n_l + n_l * n_e:].reshape(samples, -1, n_l, n_e)}
    out: dict[str, Any] = {"samples": samples, "seed": rng_seed, "seeds": seeds,
                           "n_test": n_test, "rates": [], "clean_accuracy": [], "gains": [],
                           "claims": {}}
    for li, lam in enumerate(lams):
        low, high = percentile_interval(clean[:, :, li].mean(axis=1))
        out["clean_accuracy"].append({"lambda": lam, "low": low, "high": high})
    for attack, ev in evaded.items():
        mean_ev = ev.mean(axis=1)  # (B, L, E): the mean over the drawn seeds
        for li, lam in enumerate(lams):
            for ei, e in enumerate(eps):
                low, high = percentile_interval(mean_ev[:, li, ei])
                out["rates"].append({"attack": attack, "lambda": lam, "eps": e,
                                     "low": low, "high": high})
                if li > 0 and lams[0] == 0.0:
                    gains = mean_ev[:, 0, ei] / np.maximum(mean_ev[:, li, ei], floor)
                    low, high = percentile_interval(gains)
                    out["gains"].append({"attack": attack, "lambda": lam, "eps": e,
                                         "low": low, "high": high})
        spectral = np.array([[per_model[(s, lam)]["stacked_jacobian_spectral"] for lam in lams]
                             for s in seeds])
        shared = np.array([[per_model[(s, lam)]["shared_metric_mean"] for lam in lams]
                           for s in seeds])
        values = {k: [] for k in ("C1", "C2", "C3", "C4")}
        model_lams = np.tile(np.array(lams), len(seeds))
        for b in range(samples):
            picked = draws[b]
            result = claim_values(
                model_lams, clean[b].reshape(-1), ev[b].reshape(-1, n_e),
                spectral[picked].reshape(-1), shared[picked].reshape(-1), floor)
            for k in values:
                values[k].append(result[k])
        out["claims"][attack] = {k: percentile_interval(v) for k, v in values.items()}
    return out


def aggregate_run(evaluations: Sequence[Mapping[str, Any]], suites: Sequence[Mapping[str, Any]],
                  outcomes: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """Rows, checks, claims (both attacks, with intervals and verdicts), bootstrap intervals
    and the transfer section of one run; the caller adds provenance."""
    rows = sorted((dict(row) for ev in evaluations for row in ev["rows"]),
                  key=lambda r: (r["dataset"], r["lambda"], r["seed"], r["eps"]))
    merge_suite(rows, suites)
    test_sizes = {r["dataset"]: r["n_test"] for r in rows}
    thresholds = config["analysis"]["claims"]
    boot = {**BOOTSTRAP_DEFAULTS, **(config["analysis"].get("bootstrap") or {})}
    claims = []
    for attack, key in ATTACKS.items():
        claims += evaluate_claims(rows, thresholds, test_sizes, evasion_key=key, attack=attack)
    by_dataset: dict[str, dict[int, Mapping[str, Any]]] = {}
    for payload in outcomes:
        by_dataset.setdefault(str(payload["dataset"]), {})[int(payload["seed"])] = payload
    intervals: dict[str, Any] = {}
    keyed: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}
    for dataset, per_seed in sorted(by_dataset.items()):
        intervals[dataset] = bootstrap_dataset(dataset, rows, per_seed, int(boot["samples"]),
                                               int(boot["seed"]))
        for attack, claim_iv in intervals[dataset]["claims"].items():
            for cid, iv in claim_iv.items():
                keyed[(dataset, attack, cid)] = iv
    attach_verdicts(claims, keyed)
    checks = sanity_checks(rows, suites)
    flagged = sum(1 for m in checks for c in m["checks"] if not c["passed"])
    log.info("sanity checks: %d models, %d flags", len(checks), flagged)
    return {
        "rows": rows, "claims": claims, "intervals": intervals, "checks": checks,
        "transfer": aggregate_transfer(list(suites)),
        # scalars only, for `dvc metrics show` / `dvc exp show`
        "summary": {d: {f"{c['id']}_{c['attack']}_{k}": c[k] for c in claims
                        if c["dataset"] == d for k in ("value", "verdict")}
                    for d in sorted({c["dataset"] for c in claims})},
    }


__all__ = ["aggregate_run", "bootstrap_dataset", "finite_or_none", "merge_suite",
           "sanity_checks"]
