"""Tests for :mod:`jacreg.bootstrap` and the bootstrap of :mod:`jacreg.aggregate`: coverage of a
known Bernoulli rate, coverage with three seeds (Student-t vs percentile), the three-stage
resampling (seeds, attack replicates, test inputs), and hand-made outcomes giving each
verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jacreg.aggregate import SeedSuite, bootstrap_dataset
from jacreg.bootstrap import (
    SeedOutcomes,
    bernoulli_interval,
    hierarchical_draws,
    interval,
    percentile_interval,
    replicate_rates,
    student_t_interval,
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


def _suite_outcomes(evaded: np.ndarray, attack_rates: np.ndarray | None = None,
                    replicates: list[int] | None = None) -> dict:
    """An outcomes payload of one seed, lambdas {0, 1}, one eps, from ``evaded`` (2, 1, M, n)."""
    n_l, n_e, n_m, n = evaded.shape
    replicates = list(range(n_m)) if replicates is None else replicates
    return {"lambdas": torch.tensor([0.0, 1.0], dtype=torch.float64),
            "eps": torch.tensor([0.3], dtype=torch.float64),
            "clean_correct": torch.ones((n_l, n), dtype=torch.uint8),
            "evaded": torch.from_numpy(evaded.astype(np.uint8)),
            "attack_rates": torch.from_numpy(np.zeros((n_l, n_e, n_m)) if attack_rates is None
                                             else attack_rates),
            "member_replicate": torch.tensor([replicates] * n_l, dtype=torch.int64)}


def _hand_made(gain: float, n: int = 2000, seeds: int = 3):
    """One dataset, lambdas {0, 1}, one eps, one replicate: lambda 0 evades a fraction 0.6 of
    the inputs, lambda 1 a fraction 0.6 / gain, identical in every seed (exact counts)."""
    outcomes, rows = {}, []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        base = np.zeros(n, dtype=np.uint8)
        base[rng.permutation(n)[: int(0.6 * n)]] = 1
        reg = np.zeros(n, dtype=np.uint8)
        reg[rng.permutation(n)[: int(0.6 / gain * n)]] = 1
        outcomes[seed] = _suite_outcomes(np.stack([base, reg])[:, None, None, :])
        for lam in (0.0, 1.0):
            rows.append({"dataset": "d", "lambda": lam, "seed": seed, "eps": 0.3,
                         "stacked_jacobian_spectral": 10.0 - lam * 5 + seed,
                         "shared_metric_mean": 0.8 - lam * 0.3 + 0.01 * seed})
    return rows, outcomes


@pytest.mark.parametrize("method", ["student_t", "percentile"])
@pytest.mark.parametrize(("gain", "expected"), [(6.0, "holds"), (2.0, "fails"),
                                                (4.0, "inconclusive")])
def test_hand_made_outcomes_give_each_verdict_of_c1(gain, expected, method):
    rows, outcomes = _hand_made(gain)
    result = bootstrap_dataset("d", rows, outcomes, samples=300, rng_seed=0, method=method)
    assert result["method"] == method
    low, high = result["claims"]["paper"]["C1"]
    assert low <= gain * 1.02 and high >= gain * 0.98  # the interval is around the true gain
    assert verdict((low, high), 4.0, 1) == expected
    # the rate interval of lambda 0 covers 0.6 and is narrow at n = 2000
    rate = next(r for r in result["rates"] if r["attack"] == "paper" and r["lambda"] == 0.0)
    assert rate["low"] <= 0.6 <= rate["high"] and rate["high"] - rate["low"] < 0.08


def test_draws_resample_seeds_then_replicates_then_inputs():
    draws = list(hierarchical_draws(n_seeds=3, n_replicates=4, n_inputs=50, samples=300,
                                    rng_seed=0))
    assert len(draws) == 300 and all(len(d) == 3 for d in draws)
    seeds = {tuple(s for s, _, _ in d) for d in draws}
    assert len(seeds) > 15  # of the 27 ordered seed draws
    reps = {tuple(r.tolist()) for d in draws for _, r, _ in d}
    assert all(len(r) == 4 and min(r) >= 0 and max(r) <= 3 for r in reps) and len(reps) > 100
    for d in draws:
        for _, _, weights in d:
            assert weights.shape == (50,) and weights.sum() == pytest.approx(1.0)
            assert np.allclose(weights * 50, np.round(weights * 50))  # counts of drawn inputs
    again = list(hierarchical_draws(3, 4, 50, 300, 0))
    assert all(np.array_equal(a[0][2], b[0][2]) for a, b in zip(draws, again, strict=True))


def test_replicates_widen_the_interval_and_the_worst_case_is_chosen_among_drawn_replicates():
    """Two replicates of the paper attack that disagree (evasion 0.2 and 0.6 on lambda 1) give a
    rate interval that holds both ends' mean; with the replicates identical it is narrow. The
    worst member is chosen by attack-split rate among the drawn replicates only."""
    n = 1000
    rng = np.random.default_rng(0)

    def member(rate: float) -> np.ndarray:
        out = np.zeros(n, dtype=np.uint8)
        out[rng.permutation(n)[: int(rate * n)]] = 1
        return out

    rows, agree, disagree = [], {}, {}
    for seed in range(3):
        base = member(0.6)
        for name, (r0, r1) in (("agree", (0.4, 0.4)), ("disagree", (0.2, 0.6))):
            evaded = np.stack([np.stack([base, base]), np.stack([member(r0), member(r1)])])
            attack = np.array([[[0.5, 0.5]], [[0.1, 0.9]]])  # lambda 1: replicate 1 is worst
            target = agree if name == "agree" else disagree
            target[seed] = _suite_outcomes(evaded[:, None], attack, replicates=[0, 1])
        for lam in (0.0, 1.0):
            rows.append({"dataset": "d", "lambda": lam, "seed": seed, "eps": 0.3,
                         "stacked_jacobian_spectral": 5.0 + seed - lam,
                         "shared_metric_mean": 0.5})

    def width(result: dict, attack: str) -> float:
        rate = next(r for r in result["rates"] if r["attack"] == attack and r["lambda"] == 1.0)
        return rate["high"] - rate["low"]

    narrow = bootstrap_dataset("d", rows, agree, samples=400, rng_seed=1)
    wide = bootstrap_dataset("d", rows, disagree, samples=400, rng_seed=1)
    assert wide["replicates"] == 2
    assert width(wide, "paper") > 3 * width(narrow, "paper")
    suite = SeedSuite.from_outcomes(disagree[0])
    uniform = np.full(n, 1.0 / n)
    _, paper, worst = suite.rates(np.array([0, 1]), uniform)
    assert paper[1, 0] == pytest.approx(0.4, abs=0.002)  # the mean of the two replicates
    assert worst[1, 0] == pytest.approx(0.6, abs=0.002)  # replicate 1: highest attack rate
    _, paper0, worst0 = suite.rates(np.array([0, 0]), uniform)
    assert paper0[1, 0] == pytest.approx(0.2, abs=0.002)
    assert worst0[1, 0] == pytest.approx(0.2, abs=0.002)  # replicate 1 was not drawn


def _three_seed_trial(rng: np.random.Generator, truth: float, samples: int,
                      trial: int) -> tuple[tuple, tuple]:
    """One simulated run: 3 seeds whose true rates scatter around ``truth`` (sd 0.08), each
    with 3 attack replicates (sd 0.04 around the seed's rate) over 300 Bernoulli test inputs;
    returns the (student_t, percentile) intervals of the mean rate."""
    n, n_rep = 300, 3
    cells = []
    for _ in range(3):
        seed_rate = truth + 0.08 * rng.standard_normal()
        rep_rates = np.clip(seed_rate + 0.04 * rng.standard_normal(n_rep), 0.0, 1.0)
        cells.append((rng.random((n_rep, n)) < rep_rates[:, None]).astype(np.float64))
    point = float(np.mean([c.mean() for c in cells]))
    values = []
    for draw in hierarchical_draws(3, n_rep, n, samples, trial):
        values.append(np.mean([(cells[s][reps] @ w).mean() for s, reps, w in draw]))
    return (student_t_interval(point, values, 3), percentile_interval(values))


def test_student_t_interval_covers_with_three_seeds_where_the_percentile_interval_does_not():
    """Coverage of the true mean rate over 200 simulated three-seed runs: the Student-t
    interval (Efron & Tibshirani 1993; Hesterberg 2015) reaches the nominal 95 % (within
    binomial noise), the percentile interval falls far short of it."""
    rng = np.random.default_rng(2026)
    truth, trials = 0.45, 200
    covered_t = covered_p = 0
    for trial in range(trials):
        (tl, th), (pl, ph) = _three_seed_trial(rng, truth, samples=200, trial=trial)
        covered_t += int(tl <= truth <= th)
        covered_p += int(pl <= truth <= ph)
    assert covered_t >= 0.93 * trials, covered_t  # 200 of 200 when written
    assert covered_p <= 0.87 * trials, covered_p  # 161 of 200 when written


def test_interval_methods_and_their_limits():
    values = np.random.default_rng(0).normal(0.5, 0.1, size=2000)
    low, high = student_t_interval(0.5, values, n_seeds=3)
    # t(0.975, 2) = 4.303; sqrt(3/2) = 1.2247
    assert (high - low) / 2 == pytest.approx(4.3027 * 1.22474 * values.std(ddof=1), rel=1e-3)
    assert interval(0.5, values, 1, "student_t") == percentile_interval(values)  # one seed
    assert interval(0.5, values, 3, "percentile") == percentile_interval(values)
    assert student_t_interval(float("nan"), values, 3) == (None, None)
    assert student_t_interval(0.5, [np.nan] * 10 + [1.0], 3) == (None, None)
    with pytest.raises(ValueError, match="student_t"):
        interval(0.5, values, 3, "bca")
    # clipped to the statistic's range: a correlation near 1 with a wide interval
    low, high = interval(0.95, values, 3, "student_t", bounds=(-1.0, 1.0))
    assert high == 1.0 and low == pytest.approx(0.95 - (0.5 - student_t_interval(
        0.5, values, 3)[0]))
