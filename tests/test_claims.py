"""Tests for :mod:`jacreg.claims`: C1-C4 on hand-made rows, the model-level claim values the
bootstrap uses, and the three-valued verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jacreg.claims import attach_verdicts, claim_values, evaluate_claims, verdict

# ---------------------------------------------------------------------------------- claims

LAMBDAS = (0.0, 0.5)
SEEDS = (0, 1)
EPSILONS = (0.1, 0.3)
# (lambda, seed, eps) -> evasion; seed means: lam 0: 0.5 (eps .1), 0.85 (eps .3);
# lam 0.5: 0.125 (eps .1), 0.35 (eps .3) -> gains 4.0 and 0.85 / 0.35
EVASION = {(0.0, 0, 0.1): 0.4, (0.0, 1, 0.1): 0.6, (0.0, 0, 0.3): 0.8, (0.0, 1, 0.3): 0.9,
           (0.5, 0, 0.1): 0.1, (0.5, 1, 0.1): 0.15, (0.5, 0, 0.3): 0.3, (0.5, 1, 0.3): 0.4}
ACCURACY = {(0.0, 0): 0.98, (0.0, 1): 0.96, (0.5, 0): 0.95, (0.5, 1): 0.97}  # means .97, .96
SPECTRAL = {(0.0, 0): 10.0, (0.0, 1): 12.0, (0.5, 0): 3.0, (0.5, 1): 2.0}
SHARED = {(0.0, 0): 0.8, (0.0, 1): 0.7, (0.5, 0): 0.3, (0.5, 1): 0.2}
THRESHOLDS = {"min_robustness_gain": 3.5, "max_accuracy_drop": 0.02, "min_correlation": 0.5}


def _rows(dataset: str = "mnist5k") -> list[dict]:
    rows = []
    for lam in LAMBDAS:
        for seed in SEEDS:
            for eps in EPSILONS:
                rows.append({
                    "dataset": dataset, "lambda": lam, "seed": seed, "eps": eps,
                    "uap_evasion_rate": EVASION[(lam, seed, eps)],
                    "clean_accuracy": ACCURACY[(lam, seed)],
                    "stacked_jacobian_spectral": SPECTRAL[(lam, seed)],
                    "shared_metric_mean": SHARED[(lam, seed)],
                    "linearized_logit_change": 1.0, "spectral_bound": 2.0,
                    "frobenius_bound": 3.0,
                })
    return rows


def _by_id(claims: list[dict], dataset: str = "mnist5k") -> dict[str, dict]:
    return {c["id"]: c for c in claims if c["dataset"] == dataset}


def _rows_with_strong_lambda() -> list[dict]:
    """_rows() plus lambda = 1: more robust (seed gains 8 and 6 at eps 0.1) but 6 points less
    accurate, so the accuracy-preserving lambda (drop <= 0.02) is 0.5, not the C1 lambda."""
    evasion = {(0, 0.1): 0.05, (1, 0.1): 0.1, (0, 0.3): 0.2, (1, 0.3): 0.3}
    acc = {0: 0.90, 1: 0.92}
    extra = [dict(r, **{"lambda": 1.0, "uap_evasion_rate": evasion[(r["seed"], r["eps"])],
                        "clean_accuracy": acc[r["seed"]]})
             for r in _rows() if r["lambda"] == 0.0]
    return _rows() + extra


def test_evaluate_claims_seed_spread_and_accuracy_preserving_lambda():
    c = _by_id(evaluate_claims(_rows_with_strong_lambda(), THRESHOLDS,
                               test_sizes={"mnist5k": 1000}))
    # C1 from seed means: lambda 1 at eps 0.1, 0.5 / 0.075
    assert c["C1"]["value"] == pytest.approx(0.5 / 0.075)
    assert (c["C1"]["detail"]["lambda"], c["C1"]["detail"]["eps"]) == (1.0, 0.1)
    # per seed at (1.0, 0.1): 0.4 / 0.05 = 8 and 0.6 / 0.1 = 6
    per_seed = c["C1"]["detail"]["per_seed"]
    assert per_seed["values"] == pytest.approx({"0": 8.0, "1": 6.0})
    assert per_seed["mean"] == pytest.approx(7.0)
    assert per_seed["std"] == pytest.approx(math.sqrt(2.0))
    # C2 at lambda 1: drops 0.98 - 0.90 and 0.96 - 0.92
    assert c["C2"]["value"] == pytest.approx(0.06)
    assert c["C2"]["holds"] is False
    drops = c["C2"]["detail"]["per_seed"]
    assert drops["values"] == pytest.approx({"0": 0.08, "1": 0.04})
    assert drops["mean"] == pytest.approx(0.06)
    assert drops["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert c["C2"]["detail"]["accuracy_drop_std_per_lambda"] == pytest.approx(
        {"0": 0.0, "0.5": 0.04 / math.sqrt(2), "1": 0.04 / math.sqrt(2)})
    # the largest lambda with mean drop <= 0.02 is 0.5 (drop 0.01), not lambda 1 (0.06)
    kept = c["C1"]["detail"]["gain_at_accuracy_preserving_lambda"]
    assert kept["lambda"] == 0.5
    assert kept["accuracy_drop"] == pytest.approx(0.01)
    assert kept["per_eps"] == pytest.approx({"0.1": 4.0, "0.3": 0.85 / 0.35})
    # the claim dicts keep their contract keys
    for claim in c.values():
        assert {"id", "dataset", "value", "threshold", "holds"} <= set(claim)


def test_accuracy_preserving_lambda_is_none_when_every_lambda_costs_too_much():
    strict = dict(THRESHOLDS, max_accuracy_drop=0.005)
    kept = _by_id(evaluate_claims(_rows_with_strong_lambda(), strict))["C1"]["detail"][
        "gain_at_accuracy_preserving_lambda"]
    assert kept["lambda"] is None and kept["per_eps"] == {} and kept["accuracy_drop"] is None
    loose = dict(THRESHOLDS, max_accuracy_drop=0.1)
    kept = _by_id(evaluate_claims(_rows_with_strong_lambda(), loose))["C1"]["detail"][
        "gain_at_accuracy_preserving_lambda"]
    assert kept["lambda"] == 1.0
    assert kept["per_eps"] == pytest.approx({"0.1": 0.5 / 0.075, "0.3": 0.85 / 0.25})


def test_evaluate_claims_values_by_hand():
    claims = evaluate_claims(_rows(), THRESHOLDS, test_sizes={"mnist5k": 1000})
    assert [c["id"] for c in claims] == ["C1", "C2", "C3", "C4"]
    c = _by_id(claims)

    # C1: gains 0.5 / 0.125 = 4 at eps 0.1 and 0.85 / 0.35 at eps 0.3
    assert c["C1"]["value"] == pytest.approx(4.0)
    assert c["C1"]["detail"]["lambda"] == 0.5
    assert c["C1"]["detail"]["eps"] == 0.1
    assert c["C1"]["detail"]["gains"] == pytest.approx(
        {"lambda=0.5,eps=0.1": 4.0, "lambda=0.5,eps=0.3": 0.85 / 0.35})
    assert c["C1"]["detail"]["evasion_floor"] == pytest.approx(1e-3)
    assert c["C1"]["holds"] is True

    # C2: mean accuracy 0.97 - 0.96 at lambda* = 0.5
    assert c["C2"]["value"] == pytest.approx(0.01)
    assert c["C2"]["holds"] is True
    assert c["C2"]["detail"]["accuracy_drop_per_lambda"] == pytest.approx({"0": 0.0, "0.5": 0.01})

    # C3: at eps 0.3 spectral [10, 12, 3, 2] vs evasion [.8, .9, .3, .4]
    # ranks [2, 3, 1, 0] vs [2, 3, 0, 1] -> centered dot 4, norms^2 5 -> 0.8
    assert c["C3"]["value"] == pytest.approx(0.8)
    assert c["C3"]["detail"]["bound_violations"] == 0
    assert c["C3"]["holds"] is True
    # Pearson: centered [3.25, 5.25, -3.75, -4.75] . [0.2, 0.3, -0.3, -0.2] = 4.3
    assert c["C3"]["detail"]["pearson"] == pytest.approx(4.3 / math.sqrt(74.75 * 0.26))

    # C4: shared [.8, .7, .3, .2] vs evasion [.8, .9, .3, .4]
    # centered [.3, .2, -.2, -.3] . [.2, .3, -.3, -.2] = 0.24, both norms^2 0.26 -> 12/13
    assert c["C4"]["value"] == pytest.approx(12 / 13)
    assert c["C4"]["detail"]["n_models"] == 4
    # ranks [3, 2, 1, 0] vs [2, 3, 0, 1] -> 3 / 5
    assert c["C4"]["detail"]["spearman"] == pytest.approx(0.6)
    assert c["C4"]["holds"] is True


@pytest.mark.parametrize("thresholds,expected", [
    ({"min_robustness_gain": 4.5, "max_accuracy_drop": 0.02, "min_correlation": 0.5},
     {"C1": False, "C2": True, "C3": True, "C4": True}),
    ({"min_robustness_gain": 3.5, "max_accuracy_drop": 0.005, "min_correlation": 0.5},
     {"C1": True, "C2": False, "C3": True, "C4": True}),
    ({"min_robustness_gain": 3.5, "max_accuracy_drop": 0.02, "min_correlation": 0.85},
     {"C1": True, "C2": True, "C3": False, "C4": True}),
    ({"min_robustness_gain": 3.5, "max_accuracy_drop": 0.02, "min_correlation": 0.95},
     {"C1": True, "C2": True, "C3": False, "C4": False}),
])
def test_evaluate_claims_holds_flags_follow_thresholds(thresholds, expected):
    claims = _by_id(evaluate_claims(_rows(), thresholds))
    assert {k: v["holds"] for k, v in claims.items()} == expected
    assert claims["C1"]["threshold"] == thresholds["min_robustness_gain"]


@pytest.mark.parametrize("field,value", [
    ("linearized_logit_change", 2.5),  # > spectral bound 2.0
    ("spectral_bound", 3.5),           # > Frobenius bound 3.0
])
def test_c3_fails_on_a_bound_violation(field, value):
    rows = _rows()
    rows[3][field] = value
    c3 = _by_id(evaluate_claims(rows, THRESHOLDS))["C3"]
    assert c3["detail"]["bound_violations"] == 1
    assert c3["value"] == pytest.approx(0.8)  # the correlation alone would pass
    assert c3["holds"] is False


def test_evasion_floor_caps_the_gain_when_regularized_evasion_is_zero():
    rows = _rows()
    for r in rows:
        if r["lambda"] == 0.5 and r["eps"] == 0.3:
            r["uap_evasion_rate"] = 0.0
    c1 = _by_id(evaluate_claims(rows, THRESHOLDS, test_sizes={"mnist5k": 100}))["C1"]
    assert c1["value"] == pytest.approx(0.85 / 0.01)
    assert c1["detail"]["eps"] == 0.3


def test_claims_per_dataset_and_without_baseline_lambda():
    rows = _rows("a") + [dict(r, dataset="b") for r in _rows() if r["lambda"] == 0.5]
    claims = evaluate_claims(rows, THRESHOLDS)
    assert [(c["dataset"], c["id"]) for c in claims] == [
        ("a", "C1"), ("a", "C2"), ("a", "C3"), ("a", "C4"),
        ("b", "C1"), ("b", "C2"), ("b", "C3"), ("b", "C4")]
    b = _by_id(claims, "b")
    # no lambda = 0 model: no gain and no accuracy drop can be computed
    assert b["C1"]["value"] is None and b["C1"]["holds"] is False
    assert b["C2"]["value"] is None and b["C2"]["holds"] is False
    # only 2 models at the top eps: correlations are undefined (NaN -> None), claims fail
    assert b["C3"]["value"] is None and b["C3"]["holds"] is False
    assert b["C4"]["value"] is None and b["C4"]["holds"] is False




# ------------------------------------------------------------------ claim values and verdicts

def _arrays(rows: list[dict]) -> tuple[np.ndarray, ...]:
    """Model-level arrays (one entry per (lambda, seed)) from rows with sorted eps."""
    models = sorted({(r["lambda"], r["seed"]) for r in rows})
    eps = sorted({r["eps"] for r in rows})
    cell = {(r["lambda"], r["seed"], r["eps"]): r for r in rows}
    lams = np.array([lam for lam, _ in models])
    clean = np.array([cell[(lam, s, eps[0])]["clean_accuracy"] for lam, s in models])
    evasion = np.array([[cell[(lam, s, e)]["uap_evasion_rate"] for e in eps]
                        for lam, s in models])
    spectral = np.array([cell[(lam, s, eps[0])]["stacked_jacobian_spectral"] for lam, s in models])
    shared = np.array([cell[(lam, s, eps[0])]["shared_metric_mean"] for lam, s in models])
    return lams, clean, evasion, spectral, shared


@pytest.mark.parametrize("rows", [_rows(), _rows_with_strong_lambda()])
def test_claim_values_equal_evaluate_claims(rows):
    """The bootstrap's model-level statistic is the reported claim, not a second definition."""
    claims = _by_id(evaluate_claims(rows, THRESHOLDS, test_sizes={"mnist5k": 1000}))
    values = claim_values(*_arrays(rows), floor=1 / 1000)
    for cid in ("C1", "C2", "C3", "C4"):
        assert values[cid] == pytest.approx(claims[cid]["value"], abs=1e-12), cid
    assert values["lambda"] == claims["C1"]["detail"]["lambda"]


def test_evaluate_claims_reads_the_requested_attack():
    rows = [dict(r, worst_uap_evasion_rate=min(1.0, 2 * r["uap_evasion_rate"])) for r in _rows()]
    paper = _by_id(evaluate_claims(rows, THRESHOLDS))
    worst = _by_id(evaluate_claims(rows, THRESHOLDS, evasion_key="worst_uap_evasion_rate",
                                   attack="worst"))
    assert paper["C1"]["attack"] == "paper" and worst["C1"]["attack"] == "worst"
    # lambda 0 saturates at 1.0 under the worst case: gains shrink, C1 changes
    assert worst["C1"]["value"] < paper["C1"]["value"]
    assert rows[0]["uap_evasion_rate"] == _rows()[0]["uap_evasion_rate"]  # rows untouched


@pytest.mark.parametrize(("interval", "threshold", "direction", "expected"), [
    ((4.2, 5.0), 4.0, 1, "holds"), ((2.0, 3.9), 4.0, 1, "fails"),
    ((3.0, 4.5), 4.0, 1, "inconclusive"), ((4.0, 4.5), 4.0, 1, "holds"),
    ((0.0, 0.009), 0.01, -1, "holds"), ((0.02, 0.05), 0.01, -1, "fails"),
    ((0.005, 0.02), 0.01, -1, "inconclusive"), ((None, None), 0.5, 1, "inconclusive"),
])
def test_verdict_three_values(interval, threshold, direction, expected):
    assert verdict(interval, threshold, direction) == expected


def test_attach_verdicts_uses_the_interval_and_fails_c3_on_a_violation():
    claims = evaluate_claims(_rows(), THRESHOLDS)
    intervals = {("mnist5k", "paper", "C1"): (4.5, 6.0), ("mnist5k", "paper", "C2"): (0.0, 0.05),
                 ("mnist5k", "paper", "C3"): (0.6, 0.9)}
    by_id = {c["id"]: c for c in attach_verdicts(claims, intervals)}
    assert by_id["C1"]["verdict"] == "holds" and by_id["C1"]["interval"] == [4.5, 6.0]
    assert by_id["C2"]["verdict"] == "inconclusive"
    assert by_id["C3"]["verdict"] == "holds"
    assert by_id["C4"]["verdict"] == "inconclusive" and by_id["C4"]["interval"] is None
    rows = _rows()
    rows[0]["linearized_logit_change"] = 5.0  # above the spectral bound
    broken = attach_verdicts(evaluate_claims(rows, THRESHOLDS), intervals)
    assert {c["id"]: c for c in broken}["C3"]["verdict"] == "fails"
