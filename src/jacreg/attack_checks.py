"""Sanity checks of the attacks, per model (Carlini et al., "On Evaluating Adversarial
Robustness", arXiv:1902.06705, 2019, §5 "checklist").

A robustness number that comes from a weak attack measures the attack. Each check is reported
as passing or flagged with where it failed; a flag never hides a number.

- ``monotone_in_eps``: each member's test evasion rate is non-decreasing in eps: a larger L-inf
  ball contains the smaller one, so a drop beyond the rate's 95 % interval means the attack
  did not find what it could have;
- ``transfer_below_strong``: no transferred UAP (crafted on another lambda's model) beats the
  model's own strong UAP (its strongest replicate on the attack split) beyond the strong
  rate's 95 % interval: white-box must not lose to black-box transfer (gradient masking or an
  under-optimized attack otherwise);
- ``above_random``: every UAP (paper, strong) evades more test inputs than the random +-eps
  perturbation of the same budget;
- ``large_budget``: at eps = ``check_eps`` (1.0: the perturbation can erase the input) the
  strong attack's zero-start run reaches at least ``LARGE_BUDGET_MIN`` test evasion.

Intervals here are the normal approximation of a binomial rate over the n test inputs,
p +- 1.96 sqrt(p (1 - p) / n).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jacreg.attack_suite import family_rates, member_family

LARGE_BUDGET_MIN = 0.8
Z95 = 1.959963984540054


def half_width(rate: float, n: int) -> float:
    """95 % normal-approximation half-width of a binomial rate over ``n`` inputs."""
    return Z95 * math.sqrt(max(rate * (1.0 - rate), 0.0) / max(n, 1))


def _check(name: str, problems: list[str]) -> dict[str, Any]:
    return {"name": name, "passed": not problems, "where": problems}


def _strongest(record: Mapping[str, Any]) -> float | None:
    """Test rate of the strong replicate with the highest attack-split rate (chosen without the
    test split, as the worst case is); None without a strong member."""
    names = [m for m in record["test_rates"] if member_family(m) == "strong"]
    if not names:
        return None
    attack = record.get("attack_rates") or {}
    best = max(names, key=lambda m: (attack.get(m, 0.0), -names.index(m)))
    return float(record["test_rates"][best])


def model_checks(per_eps: Sequence[Mapping[str, Any]], random_rates: Mapping[float, float],
                 large_budget: Mapping[str, Any] | None, n_test: int) -> list[dict[str, Any]]:
    """The four checks of one model. ``per_eps``: the suite's records of that model (eps,
    ``test_rates`` and ``attack_rates`` per member, ``worst``), ``random_rates``: eps -> random
    +-eps evasion rate. Members with replicates (``paper#r``, ``strong#r``) are checked by
    their family's mean over the replicates; the strong rate a transfer must not beat is that
    of the strongest strong replicate."""
    records = sorted(per_eps, key=lambda r: r["eps"])
    families = [family_rates(r["test_rates"]) for r in records]
    members = list(families[0]) + ["worst"]

    def rate(index: int, member: str) -> float:
        if member == "worst":
            return records[index]["test_rates"][records[index]["worst"]]
        return families[index][member]

    monotone = []
    for member in members:
        for i in range(len(records) - 1):
            a, b = rate(i, member), rate(i + 1, member)
            if b < a - half_width(a, n_test):
                monotone.append(f"{member}: {a:.4f} at eps={records[i]['eps']:g} > {b:.4f} at "
                                f"eps={records[i + 1]['eps']:g}")
    transfer = []
    for record, family in zip(records, families, strict=True):
        strong = _strongest(record)
        if strong is None:
            continue
        limit = strong + half_width(strong, n_test)
        for member, value in family.items():
            if member.startswith("transfer:") and value > limit:
                transfer.append(f"eps={record['eps']:g}: {member} {value:.4f} > strong "
                                f"{strong:.4f} (+{limit - strong:.4f})")
    random_ = []
    for record, family in zip(records, families, strict=True):
        baseline = random_rates.get(record["eps"])
        if baseline is None:
            continue
        for member in ("paper", "strong"):
            if member in family and family[member] <= baseline:
                random_.append(f"eps={record['eps']:g}: {member} {family[member]:.4f}"
                               f" <= random {baseline:.4f}")
    checks = [_check("monotone_in_eps", monotone), _check("transfer_below_strong", transfer),
              _check("above_random", random_)]
    if large_budget is not None:
        value = large_budget["test_evasion_rate"]
        checks.append(_check("large_budget", [] if value >= LARGE_BUDGET_MIN else [
            f"eps={large_budget['eps']:g}: strong {value:.4f} < {LARGE_BUDGET_MIN}"]))
    return checks
