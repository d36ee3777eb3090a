"""Tests for :mod:`jacreg.metrics`: rates, correlations and the claims C1-C4 on hand-made rows."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jacreg.metrics import (
    accuracy,
    aggregate_transfer,
    evaluate_claims,
    evasion_curve_table,
    mean_std,
    pearson,
    predict,
    random_sign_perturbation,
    seed_summary,
    spearman,
    uap_evasion_rate,
    uap_fooling_rate,
)

# ---------------------------------------------------------------------------------- rates


def test_rates_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    clean = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0])      # 6/8 correct
    adv = torch.tensor([0, 2, 2, 9, 9, 5, 0, 7])        # wrong at 1, 3, 4, 6 -> 4/8
    assert accuracy(clean, labels) == pytest.approx(0.75)
    assert uap_evasion_rate(adv, labels) == pytest.approx(0.5)
    # changed w.r.t. clean at 1, 3, 4, 7 -> 4/8 (index 6 stays wrong: not a change)
    assert uap_fooling_rate(clean, adv) == pytest.approx(0.5)
    assert uap_fooling_rate(clean, clean) == 0.0
    assert uap_evasion_rate(labels, labels) == 0.0
    assert uap_evasion_rate(torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0])) == pytest.approx(
        1 / 3)


def test_predict_applies_clipped_perturbation_in_batches():
    # a "model" that returns the input pixels as logits: argmax = brightest pixel
    model = nn.Flatten()
    model.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    x = torch.zeros((5, 1, 1, 3))
    x[:, 0, 0, 0] = 0.9
    x[:, 0, 0, 1] = 0.5
    assert predict(model, x, batch_size=2).tolist() == [0] * 5
    v = torch.tensor([[[0.0, 0.45, 0.0]]])  # 0.5 + 0.45 = 0.95 > 0.9
    assert predict(model, x, v, batch_size=2).tolist() == [1] * 5
    v_big = torch.tensor([[[0.5, 0.6, 0.0]]])  # both clip to 1.0: tie -> first index
    assert predict(model, x, v_big, batch_size=3).tolist() == [0] * 5


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_random_sign_perturbation_entries_are_plus_minus_eps(eps):
    v = random_sign_perturbation((3, 8, 8), eps, torch.Generator().manual_seed(0))
    assert v.shape == (3, 8, 8)
    assert bool(((v == eps) | (v == -eps)).all())
    assert 0.3 < float((v > 0).float().mean()) < 0.7  # both signs occur
    again = random_sign_perturbation((3, 8, 8), eps, torch.Generator().manual_seed(0))
    assert torch.equal(v, again)


# ---------------------------------------------------------------------------- correlations


def test_pearson_hand_computed():
    # x - mean = [-1, 0, 1], y - mean = [-2, 1, 1]: r = 3 / (sqrt 2 * sqrt 6) = sqrt(3)/2
    assert pearson([1, 2, 3], [0, 3, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_pearson_and_spearman_are_nan_for_constant_or_short_input():
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(pearson([1, 2, 3], [5, 5, 5]))
    assert math.isnan(pearson([1, 2], [1, 2]))
    assert math.isnan(spearman([2, 2, 2, 2], [1, 2, 3, 4]))


def test_spearman_hand_computed_with_ties():
    # monotone but nonlinear: rank correlation 1
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # a = [10, 20, 20, 30] -> ranks [0, 1.5, 1.5, 3]; b = [1, 3, 2, 4] -> ranks [0, 2, 1, 3]
    # centered: [-1.5, 0, 0, 1.5] and [-1.5, 0.5, -0.5, 1.5]: r = 4.5 / sqrt(4.5 * 5)
    assert spearman([10, 20, 20, 30], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # ties on both sides: a ranks [0.5, 0.5, 2, 3], b ranks [0, 2, 2, 2]
    # centered: [-1, -1, 0.5, 1.5] and [-1.5, 0.5, 0.5, 0.5]: r = 2 / sqrt(4.5 * 3)
    assert spearman([5, 5, 6, 7], [0, 9, 9, 9]) == pytest.approx(2 / math.sqrt(4.5 * 3))


def test_mean_std_and_seed_summary():
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert mean_std([4.0]) == (4.0, 0.0)
    rows = [{"dataset": "d", "lambda": 0.0, "eps": 0.1, "k": v} for v in (1.0, 2.0, 6.0)]
    rows.append({"dataset": "d", "lambda": 0.5, "eps": 0.1, "k": 7.0})
    summary = seed_summary(rows, "k")
    assert summary[("d", 0.0, 0.1)] == pytest.approx((3.0, math.sqrt(7.0)))
    assert summary[("d", 0.5, 0.1)] == (7.0, 0.0)


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


def test_aggregate_transfer_mean_and_std_over_seeds():
    records = [
        {"dataset": "d", "seed": 1, "eps": 0.3, "lambdas": [0.0, 1.0],
         "matrix": [[0.8, 0.3], [0.6, 0.2]]},
        {"dataset": "d", "seed": 0, "eps": 0.3, "lambdas": [0.0, 1.0],
         "matrix": [[0.6, 0.1], [0.4, 0.2]]},
        {"dataset": "e", "seed": 0, "eps": 0.1, "lambdas": [0.0], "matrix": [[0.5]]},
    ]
    out = aggregate_transfer(records)
    assert sorted(out) == ["d", "e"]
    d = out["d"]
    assert d["seeds"] == [0, 1] and d["lambdas"] == [0.0, 1.0] and d["eps"] == 0.3
    assert d["matrix_mean"] == [pytest.approx([0.7, 0.2]), pytest.approx([0.5, 0.2])]
    s = 0.2 / math.sqrt(2)
    assert d["matrix_std"] == [pytest.approx([s, s]), pytest.approx([s, 0.0])]
    assert d["per_seed"] == {"0": [[0.6, 0.1], [0.4, 0.2]], "1": [[0.8, 0.3], [0.6, 0.2]]}
    assert out["e"]["matrix_mean"] == [[0.5]] and out["e"]["matrix_std"] == [[0.0]]
    assert aggregate_transfer([]) == {}
    with pytest.raises(ValueError, match="disagree"):
        aggregate_transfer([records[0], dict(records[1], eps=0.2)])


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


def test_evasion_curve_table_averages_over_seeds():
    table = evasion_curve_table(_rows())
    assert [(r["dataset"], r["lambda"], r["eps"]) for r in table] == [
        ("mnist5k", 0.0, 0.1), ("mnist5k", 0.0, 0.3), ("mnist5k", 0.5, 0.1), ("mnist5k", 0.5, 0.3)]
    means = [r["uap_evasion_rate_mean"] for r in table]
    assert means == pytest.approx([0.5, 0.85, 0.125, 0.35])
    # sample std of two values = |a - b| / sqrt(2)
    stds = [r["uap_evasion_rate_std"] for r in table]
    assert stds == pytest.approx([d / math.sqrt(2) for d in (0.2, 0.1, 0.05, 0.1)])
    assert [r["clean_accuracy_mean"] for r in table] == pytest.approx([0.97, 0.97, 0.96, 0.96])
