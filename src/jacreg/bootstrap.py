"""Hierarchical bootstrap intervals for rates, gains, correlations and the claims.

Three sources of randomness shape every number here: the training seed (which model), the
attack's own randomness (which UAP: SGD-UAP with a constant sign step is a chaotic optimizer
whose result changes with the batch order and with the last bits of floating point, so each
stochastic attack runs ``attack.replicates`` times) and the finite test set. The three-stage
(hierarchical) bootstrap resamples all three, in order (Davison & Hinkley, *Bootstrap Methods
and their Application*, 1997, §3.8; Field & Welsh, "Bootstrapping clustered data", JRSS-B 2007;
Ren et al., "Nonparametric bootstrapping for hierarchical data", J. Appl. Stat. 2010): for each
of ``samples`` bootstrap samples,

1. draw S seeds with replacement from the S seeds of the run;
2. for each drawn seed, draw R attack replicates with replacement from its R replicates;
3. for each drawn seed, draw n test inputs with replacement from the n test inputs, the same
   draw for every lambda, eps, attack and replicate of that seed (comparisons stay paired);

then recompute the statistic on the sample, every selection included (the worst member of the
attack suite among the drawn replicates, C1's lambda and eps): a rate as the mean over the
drawn seeds of the per-model rate on the drawn inputs; a gain as a ratio of such means; a
correlation across the drawn models. Everything is seeded by ``analysis.bootstrap.seed``.

**Intervals with few seeds** (``analysis.bootstrap.interval``). The percentile interval (the
2.5 and 97.5 percentiles of the bootstrap samples) cannot cover well with a handful of seeds:
its first stage knows only the S seeds it has (3 seeds give 10 distinct draws, and the range
of 3 normal draws misses their mean a quarter of the time), and the bootstrap variance of a
mean of S values is (S - 1) / S of the plug-in variance ("narrowness bias", Hesterberg, "What
Teachers Should Know About the Bootstrap", The American Statistician 69(4), 2015). The default
``student_t`` interval is the bootstrap standard-error interval with Student's t critical value
for the S - 1 degrees of freedom that S seeds give and Hesterberg's small-sample correction
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, §12.2 and §13.2):

    estimate +- t_{0.975, S-1} * sqrt(S / (S - 1)) * sd(bootstrap samples),

which for the mean of S normal seed values is exactly Student's t interval. Its coverage, and
the percentile interval's shortfall, with 3 seeds are measured in ``tests/test_bootstrap.py``.
With one seed there are no degrees of freedom for the seed stage: the interval is then the
percentile interval over replicates and test inputs only, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

INTERVAL_METHODS = ("student_t", "percentile")


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


def hierarchical_draws(n_seeds: int, n_replicates: int, n_inputs: int, samples: int,
                       rng_seed: int) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
    """The three-stage resampling (module docstring), one bootstrap sample at a time: a list
    over the S drawn seeds of ``(seed index, replicate indices (R,), input weights (n,))``;
    the weights count how often each test input was drawn, divided by n (they sum to 1)."""
    rng = np.random.default_rng(rng_seed)
    for _ in range(samples):
        picked = rng.integers(0, n_seeds, size=n_seeds)
        yield [(int(s), rng.integers(0, n_replicates, size=n_replicates),
                np.bincount(rng.integers(0, n_inputs, size=n_inputs),
                            minlength=n_inputs) / n_inputs) for s in picked]


def student_t_interval(estimate: float | None, values: Sequence[float] | np.ndarray,
                       n_seeds: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """``estimate +- t_{(1+level)/2, S-1} sqrt(S/(S-1)) sd(values)`` (module docstring);
    (None, None) when the estimate is undefined or more than 5 % of the samples are."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if (estimate is None or not math.isfinite(estimate) or n_seeds < 2 or len(arr) == 0
            or len(finite) < 0.95 * len(arr)):
        return None, None
    quantile = float(stats.t.ppf(0.5 + level / 2.0, n_seeds - 1))
    half = quantile * math.sqrt(n_seeds / (n_seeds - 1)) * float(np.std(finite, ddof=1))
    return float(estimate) - half, float(estimate) + half


def interval(estimate: float | None, values: Sequence[float] | np.ndarray, n_seeds: int,
             method: str = "student_t", level: float = 0.95,
             bounds: tuple[float, float] = (-math.inf, math.inf)
             ) -> tuple[float | None, float | None]:
    """The ``level`` interval of a statistic from its bootstrap samples ``values``: ``method``
    ``student_t`` (needs 2 or more seeds; with one seed: the percentile interval) or
    ``percentile``, clipped to the statistic's range ``bounds`` (a rate lies in [0, 1], a
    correlation in [-1, 1], a gain is positive)."""
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {INTERVAL_METHODS}, got {method!r}")
    if method == "percentile" or n_seeds < 2:
        low, high = percentile_interval(values, level)
    else:
        low, high = student_t_interval(estimate, values, n_seeds, level)
    if low is None or high is None:
        return None, None
    return max(low, bounds[0]), min(high, bounds[1])


def interval_method_used(method: str, n_seeds: int) -> str:
    """What :func:`interval` computes for ``method`` and ``n_seeds`` (for the report)."""
    return "percentile" if method == "percentile" or n_seeds < 2 else "student_t"


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
