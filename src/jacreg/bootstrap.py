"""Hierarchical bootstrap intervals for rates, gains, correlations and the claims.

Two sources of randomness shape every number here: the training seed (which model, which UAP)
and the finite test set. The two-stage (hierarchical) bootstrap resamples both, in order
(Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, §3.8; Field & Welsh,
"Bootstrapping clustered data", JRSS-B 2007): for each of ``samples`` replicates,

1. draw S seeds with replacement from the S seeds of the run;
2. for each drawn seed, draw n test inputs with replacement from the n test inputs, the same
   draw for every lambda, eps and attack of that seed (the comparisons stay paired);

then recompute the statistic on the replicate: a rate as the mean over the drawn seeds of the
per-model rate on the drawn inputs; a gain as a ratio of such means; a correlation across the
drawn models, whose per-input rates are resampled and whose Jacobian norms are kept. The 95 %
interval is the 2.5 and 97.5 percentiles of the replicates (percentile bootstrap). Everything is
seeded by ``analysis.bootstrap.seed``.

With few seeds the first stage is coarse (two seeds give three distinct seed draws); the
intervals then mostly show how much the two seeds disagree, which is the point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SeedOutcomes:
    """The per-input outcomes of one seed's models: ``cells`` (C, n) of 0/1 values over the
    same n test inputs (rows: e.g. clean-correct per lambda, evaded per lambda, eps, attack)."""

    seed: int
    cells: np.ndarray


def replicate_rates(seeds: Sequence[SeedOutcomes], samples: int,
                    rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(draws, rates)``: ``draws`` (B, S) indices of the drawn seeds and ``rates`` (B, S, C)
    the cell rates of each drawn seed on its resampled inputs."""
    rng = np.random.default_rng(rng_seed)
    n_seeds = len(seeds)
    sizes = {s.cells.shape[1] for s in seeds}
    if len(sizes) != 1:
        raise ValueError(f"seeds disagree on the number of test inputs: {sorted(sizes)}")
    n = sizes.pop()
    cells = [s.cells.astype(np.float64) for s in seeds]
    draws = rng.integers(0, n_seeds, size=(samples, n_seeds))
    rates = np.empty((samples, n_seeds, cells[0].shape[0]))
    for b in range(samples):
        for j in range(n_seeds):
            weights = np.bincount(rng.integers(0, n, size=n), minlength=n)
            rates[b, j] = cells[draws[b, j]] @ weights / n
    return draws, rates


def percentile_interval(values: Sequence[float] | np.ndarray,
                        level: float = 0.95) -> tuple[float | None, float | None]:
    """The central ``level`` percentile interval of the finite replicates; (None, None) when
    more than 5 % of them are undefined (e.g. a correlation of constant values)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if len(arr) == 0 or len(finite) < 0.95 * len(arr):
        return None, None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_statistic(draws: np.ndarray, rates: np.ndarray,
                        statistic: Callable[[np.ndarray, np.ndarray], float | dict[str, float]]
                        ) -> list:
    """Evaluate ``statistic(seed_indices (S,), rates (S, C))`` on every replicate."""
    return [statistic(draws[b], rates[b]) for b in range(len(draws))]


def bernoulli_interval(outcomes: np.ndarray, samples: int, rng_seed: int,
                       level: float = 0.95) -> tuple[float | None, float | None]:
    """Interval of one rate from one seed's 0/1 outcomes (the one-seed case of the scheme)."""
    draws, rates = replicate_rates([SeedOutcomes(0, outcomes.reshape(1, -1))], samples, rng_seed)
    return percentile_interval(rates[:, :, 0].mean(axis=1), level)


def finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
