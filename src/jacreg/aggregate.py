"""Aggregation of one run into ``metrics.json`` (DESIGN §3).

Merges the per-model evaluations (:mod:`jacreg.evaluate`) with the attack suite of each
(dataset, seed) (:mod:`jacreg.attack_suite`) into one row per (dataset, lambda, seed, eps);
runs the attack sanity checks (:mod:`jacreg.attack_checks`); computes claims C1-C4 with the
paper's attack and with the worst case (:mod:`jacreg.claims`); and attaches hierarchical
bootstrap intervals (:mod:`jacreg.bootstrap`: seeds, then attack replicates, then test inputs)
to every seed-averaged rate, gain and claim.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jacreg.attack_checks import model_checks
from jacreg.attack_suite import family_rates, member_family, member_replicate
from jacreg.bootstrap import (
    finite_or_none,
    hierarchical_draws,
    interval,
    interval_method_used,
)
from jacreg.claims import attach_verdicts, claim_values, evaluate_claims
from jacreg.convergence import summarize as summarize_convergence
from jacreg.metrics import aggregate_transfer

log = logging.getLogger(__name__)

ATTACKS = {"paper": "uap_evasion_rate", "worst": "worst_uap_evasion_rate"}
BOOTSTRAP_DEFAULTS = {"samples": 1000, "seed": 0, "interval": "student_t"}
UNIT, POSITIVE, SIGNED = (0.0, 1.0), (0.0, float("inf")), (-1.0, 1.0)
# the range of each claim's value: a gain, an accuracy drop, two correlations
CLAIM_RANGE = {"C1": POSITIVE, "C2": SIGNED, "C3": SIGNED, "C4": SIGNED}


def merge_suite(rows: list[dict[str, Any]], suites: Sequence[Mapping[str, Any]]) -> None:
    """Add each member's rates, the worst case and the transfer summary to the rows, in place.

    Members with replicates (``paper#r``, ``strong#r``) enter a row as their family's mean over
    the replicates (``strong_uap_evasion_rate``, ``member_evasion_rates``) and as the list of
    per-replicate rates (``member_replicate_evasion_rates``); the worst case is one member,
    replicate included (``worst_uap_member``, e.g. ``strong#2``)."""
    index = {(s["dataset"], int(s["seed"]), float(m["lambda"]), float(rec["eps"])): rec
             for s in suites for m in s["models"] for rec in m["per_eps"]}
    for row in rows:
        rec = index.get((row["dataset"], int(row["seed"]), float(row["lambda"]),
                         float(row["eps"])))
        if rec is None:
            raise ValueError(f"no attack-suite record for dataset={row['dataset']} "
                             f"lambda={row['lambda']} seed={row['seed']} eps={row['eps']}")
        tests, attacks = rec["test_rates"], rec["attack_rates"]
        families = family_rates(tests)
        transfers = [m for m in tests if m.startswith("transfer:")]
        best_transfer = max(transfers, key=lambda m: attacks[m]) if transfers else None
        warms = [m for m in tests if m.startswith("warm:")]
        best_warm = max(warms, key=lambda m: attacks[m]) if warms else None
        replicated: dict[str, list[float]] = {}
        for name, rate in tests.items():
            if member_replicate(name) >= 0:
                replicated.setdefault(member_family(name), []).append(float(rate))
        row.update({
            "strong_uap_evasion_rate": families.get("strong"),
            "transfer_uap_evasion_rate": tests[best_transfer] if best_transfer else None,
            "transfer_uap_source": best_transfer,
            # the warm start from the transfers, and what it adds over the best transfer
            "warm_uap_evasion_rate": tests[best_warm] if best_warm else None,
            "warm_uap_source": best_warm,
            "warm_gain_over_transfer": (tests[best_warm] - tests[best_transfer]
                                        if best_warm and best_transfer else None),
            "worst_uap_evasion_rate": tests[rec["worst"]],
            "worst_uap_member": rec["worst"],
            "worst_uap_family": member_family(rec["worst"]),
            "member_evasion_rates": families,
            "member_replicate_evasion_rates": replicated,
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


@dataclass
class SeedSuite:
    """What the bootstrap resamples of one seed (see :func:`jacreg.attack_suite.evaluate_suite`):
    ``clean`` (L, n) and ``evaded`` (L, E, M, n) as 0/1 per test input, ``attack_rates``
    (L, E, M), and each member's replicate ``member_replicate`` (M,), -1 for transfers and warm
    starts."""

    clean: np.ndarray
    evaded: np.ndarray
    attack_rates: np.ndarray
    member_replicate: np.ndarray

    @classmethod
    def from_outcomes(cls, outcomes: Mapping[str, Any]) -> SeedSuite:
        replicate = outcomes["member_replicate"].numpy()
        if not (replicate == replicate[0]).all():
            raise ValueError("members differ in order between lambdas")
        return cls(clean=outcomes["clean_correct"].numpy().astype(np.float64),
                   evaded=outcomes["evaded"].numpy().astype(np.float64),
                   attack_rates=outcomes["attack_rates"].numpy(),
                   member_replicate=replicate[0])

    @property
    def replicates(self) -> int:
        return int(self.member_replicate.max()) + 1

    def paper_members(self) -> np.ndarray:
        """Member index of ``paper#r`` for r = 0..R-1 (they come first)."""
        return np.arange(self.replicates)

    def rates(self, replicates: np.ndarray, weights: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clean accuracy (L,), paper-attack evasion (L, E) as the mean over the drawn
        ``replicates``, and worst-case evasion (L, E): the member, among the drawn replicates'
        members and the transfers, with the highest attack-split rate (ties: the earlier
        member), scored on test inputs weighted by ``weights`` (summing to 1)."""
        n_l, n_e, n_m, n = self.evaded.shape
        evaded = (self.evaded.reshape(-1, n) @ weights).reshape(n_l, n_e, n_m)
        paper = evaded[:, :, self.paper_members()[replicates]].mean(axis=2)
        allowed = np.isin(self.member_replicate, replicates) | (self.member_replicate < 0)
        scores = np.where(allowed, self.attack_rates, -np.inf)
        chosen = scores.argmax(axis=2)  # the first maximum: the earlier member wins ties
        worst = np.take_along_axis(evaded, chosen[:, :, None], axis=2)[:, :, 0]
        return self.clean @ weights, paper, worst


def bootstrap_dataset(dataset: str, rows: list[dict[str, Any]],
                      outcomes: Mapping[int, Mapping[str, Any]], samples: int,
                      rng_seed: int, method: str = "student_t") -> dict[str, Any]:
    """Intervals of one dataset: rates and clean accuracy per cell, gains, and claim values
    per attack, from the three-stage bootstrap over its seeds, attack replicates and test
    inputs (:mod:`jacreg.bootstrap`), as ``method`` intervals around the full-data values."""
    seeds = sorted(outcomes)
    first = outcomes[seeds[0]]
    lams = [float(v) for v in first["lambdas"]]
    eps = [float(v) for v in first["eps"]]
    n_e, n_s = len(eps), len(seeds)
    suites = [SeedSuite.from_outcomes(outcomes[s]) for s in seeds]
    n_test = suites[0].clean.shape[1]
    n_rep = {s.replicates for s in suites}
    if len(n_rep) != 1 or len({s.clean.shape[1] for s in suites}) != 1:
        raise ValueError(f"{dataset}: seeds disagree on the number of attack replicates or "
                         "test inputs")
    n_rep_value = n_rep.pop()
    floor = 1.0 / n_test
    per_model = {(int(r["seed"]), float(r["lambda"])): r for r in rows
                 if r["dataset"] == dataset}
    spectral = np.array([[per_model[(s, lam)]["stacked_jacobian_spectral"] for lam in lams]
                         for s in seeds])
    shared = np.array([[per_model[(s, lam)]["shared_metric_mean"] for lam in lams]
                       for s in seeds])
    model_lams = np.tile(np.array(lams), n_s)

    def statistics_of(draw: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        picked = np.array([s for s, _, _ in draw])
        parts = [suites[s].rates(reps, w) for s, reps, w in draw]
        clean = np.stack([p[0] for p in parts])  # (S, L)
        out: dict[str, Any] = {"clean": clean.mean(axis=0)}
        for attack, k in (("paper", 1), ("worst", 2)):
            ev = np.stack([p[k] for p in parts])  # (S, L, E)
            mean_ev = ev.mean(axis=0)
            out[attack] = {
                "rates": mean_ev,
                "gains": (mean_ev[0][None, :] / np.maximum(mean_ev[1:], floor)
                          if lams[0] == 0.0 else np.zeros((0, n_e))),
                "claims": claim_values(model_lams, clean.reshape(-1), ev.reshape(-1, n_e),
                                       spectral[picked].reshape(-1),
                                       shared[picked].reshape(-1), floor)}
        return out

    everything = [(s, np.arange(n_rep_value), np.full(n_test, 1.0 / n_test))
                  for s in range(n_s)]
    point = statistics_of(everything)
    boot = [statistics_of(draw) for draw in
            hierarchical_draws(n_s, n_rep_value, n_test, samples, rng_seed)]

    def iv(estimate: float, values: list[float] | np.ndarray,
           bounds: tuple[float, float]) -> tuple[float | None, ...]:
        return interval(finite_or_none(float(estimate)), values, n_s, method, bounds=bounds)

    out: dict[str, Any] = {"samples": samples, "seed": rng_seed, "seeds": seeds,
                           "replicates": n_rep_value, "n_test": n_test,
                           "method": interval_method_used(method, n_s),
                           "rates": [], "clean_accuracy": [], "gains": [], "claims": {}}
    for li, lam in enumerate(lams):
        low, high = iv(point["clean"][li], [b["clean"][li] for b in boot], UNIT)
        out["clean_accuracy"].append({"lambda": lam, "low": low, "high": high})
    for attack in ("paper", "worst"):
        for li, lam in enumerate(lams):
            for ei, e in enumerate(eps):
                low, high = iv(point[attack]["rates"][li, ei],
                               [b[attack]["rates"][li, ei] for b in boot], UNIT)
                out["rates"].append({"attack": attack, "lambda": lam, "eps": e,
                                     "low": low, "high": high})
                if li > 0 and lams[0] == 0.0:
                    low, high = iv(point[attack]["gains"][li - 1, ei],
                                   [b[attack]["gains"][li - 1, ei] for b in boot], POSITIVE)
                    out["gains"].append({"attack": attack, "lambda": lam, "eps": e,
                                         "low": low, "high": high})
        out["claims"][attack] = {
            cid: iv(point[attack]["claims"][cid], [b[attack]["claims"][cid] for b in boot],
                    CLAIM_RANGE[cid])
            for cid in ("C1", "C2", "C3", "C4")}
    return out


def aggregate_run(evaluations: Sequence[Mapping[str, Any]], suites: Sequence[Mapping[str, Any]],
                  outcomes: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                  convergence: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
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
                                               int(boot["seed"]), str(boot["interval"]))
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
        **({"convergence": summarize_convergence(convergence)} if convergence else {}),
        # scalars only, for `dvc metrics show` / `dvc exp show`
        "summary": {d: {f"{c['id']}_{c['attack']}_{k}": c[k] for c in claims
                        if c["dataset"] == d for k in ("value", "verdict")}
                    for d in sorted({c["dataset"] for c in claims})},
    }


__all__ = ["SeedSuite", "aggregate_run", "bootstrap_dataset", "finite_or_none", "merge_suite",
           "sanity_checks"]
