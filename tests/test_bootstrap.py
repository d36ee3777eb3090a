"""Tests for :mod:`jacreg.bootstrap` and the bootstrap of :mod:`jacreg.aggregate`: coverage of a
known Bernoulli rate, the two-stage resampling, and hand-made outcomes giving each verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jacreg.aggregate import bootstrap_dataset
from jacreg.bootstrap import (
    SeedOutcomes,
    bernoulli_interval,
    percentile_interval,
    replicate_rates,
)
from jacreg.claims import verdict


def test_interval_of_a_bernoulli_rate_covers_p_in_90_to_99_of_100_trials():
    p, n, covered = 0.3, 400, 0
    rng = np.random.default_rng(12345)
    for trial in range(100):
        outcomes = (rng.random(n) < p).astype(np.uint8)
        low, high = bernoulli_interval(outcomes, samples=400, rng_seed=trial)
        covered += int(low <= p <= high)
    assert 90 <= covered <= 99


def test_replicates_resample_seeds_then_inputs_with_the_same_draw_for_all_cells():
    # seed 0: every input 0; seed 1: every input 1 -> a replicate's seed rate is exactly the
    # drawn seed's constant, whatever inputs were drawn
    seeds = [SeedOutcomes(0, np.zeros((2, 50), dtype=np.uint8)),
             SeedOutcomes(1, np.ones((2, 50), dtype=np.uint8))]
    draws, rates = replicate_rates(seeds, samples=200, rng_seed=0)
    assert draws.shape == (200, 2) and rates.shape == (200, 2, 2)
    assert np.array_equal(rates[:, :, 0], draws.astype(float))
    # all four seed draws occur: the first stage really resamples seeds
    assert {tuple(d) for d in draws.tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # paired cells: two identical rows of one seed get identical resampled rates
    rng = np.random.default_rng(1)
    row = (rng.random(80) < 0.4).astype(np.uint8)
    _, paired = replicate_rates([SeedOutcomes(0, np.stack([row, row, 1 - row]))], 100, 3)
    assert np.array_equal(paired[:, 0, 0], paired[:, 0, 1])
    assert np.allclose(paired[:, 0, 2], 1 - paired[:, 0, 0])
    # seeded: the same seed gives the same replicates
    assert np.array_equal(replicate_rates(seeds, 50, 7)[1], replicate_rates(seeds, 50, 7)[1])


def test_percentile_interval_is_undefined_when_replicates_are():
    assert percentile_interval([np.nan] * 10 + [1.0]) == (None, None)
    low, high = percentile_interval(np.arange(1001, dtype=float))
    assert low == pytest.approx(25.0) and high == pytest.approx(975.0)


def _hand_made(gain: float, n: int = 2000, seeds: int = 3):
    """One dataset, lambdas {0, 1}, one eps: lambda 0 evades a fraction 0.6 of the inputs,
    lambda 1 a fraction 0.6 / gain, identical in every seed (exact counts)."""
    outcomes, rows = {}, []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        base = np.zeros(n, dtype=np.uint8)
        base[rng.permutation(n)[: int(0.6 * n)]] = 1
        reg = np.zeros(n, dtype=np.uint8)
        reg[rng.permutation(n)[: int(0.6 / gain * n)]] = 1
        paper = torch.from_numpy(np.stack([base, reg])[:, None, :])
        outcomes[seed] = {"lambdas": torch.tensor([0.0, 1.0], dtype=torch.float64),
                          "eps": torch.tensor([0.3], dtype=torch.float64),
                          "clean_correct": torch.ones((2, n), dtype=torch.uint8),
                          "paper_evaded": paper, "worst_evaded": paper.clone()}
        for lam in (0.0, 1.0):
            rows.append({"dataset": "d", "lambda": lam, "seed": seed, "eps": 0.3,
                         "stacked_jacobian_spectral": 10.0 - lam * 5 + seed,
                         "shared_metric_mean": 0.8 - lam * 0.3 + 0.01 * seed})
    return rows, outcomes


@pytest.mark.parametrize(("gain", "expected"), [(6.0, "holds"), (2.0, "fails"),
                                                (4.0, "inconclusive")])
def test_hand_made_outcomes_give_each_verdict_of_c1(gain, expected):
    rows, outcomes = _hand_made(gain)
    result = bootstrap_dataset("d", rows, outcomes, samples=300, rng_seed=0)
    low, high = result["claims"]["paper"]["C1"]
    assert low <= gain * 1.02 and high >= gain * 0.98  # the interval is around the true gain
    assert verdict((low, high), 4.0, 1) == expected
    # the rate interval of lambda 0 covers 0.6 and is narrow at n = 2000
    rate = next(r for r in result["rates"] if r["attack"] == "paper" and r["lambda"] == 0.0)
    assert rate["low"] <= 0.6 <= rate["high"] and rate["high"] - rate["low"] < 0.06
