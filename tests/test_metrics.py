"""Tests for :mod:`jacreg.metrics`: rates, correlations and aggregation over seeds."""

from __future__ import annotations

import math

import pytest
import torch
from test_claims import _rows  # the hand-made rows of the claims tests
from torch import nn

from jacreg.metrics import (
    accuracy,
    aggregate_transfer,
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
