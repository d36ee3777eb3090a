"""Tests for :mod:`jacreg.convergence`: the long run's settings, its gap to a shipped worst case
on a linear classifier with a known optimum, and the summary's largest gap."""

from __future__ import annotations

import pytest
import torch
from test_attack_suite import EPS, SHAPE, _linear_two_class

from jacreg.attack_suite import StrongSettings, evasion_rate
from jacreg.convergence import long_settings, model_convergence, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def test_long_settings_multiply_restarts_and_epochs():
    longer = long_settings(StrongSettings(restarts=1, epochs=2, losses=("ce", "margin")), 10)
    assert (longer.restarts, longer.epochs, longer.losses) == (10, 20, ("ce", "margin"))
    assert long_settings(StrongSettings(restarts=0, epochs=3), 4).restarts == 4


def test_gap_of_a_weak_shipped_worst_case_to_the_long_run():
    """The shipped worst case is a bad UAP (-eps sign(w)); the long run reaches the analytic
    optimum of the linear classifier, so the gap is exactly optimum - shipped on the test set."""
    model, x, y, w, b = _linear_two_class(n=96)
    x_test, y_test = x[48:], y[48:]
    bad = (-EPS * torch.sign(w)).reshape(SHAPE)
    shipped_rate = evasion_rate(model, x_test, y_test, bad)
    shipped = [{"eps": EPS, "worst": "paper#0", "test_rates": {"paper#0": shipped_rate}}]
    rows = model_convergence(model, x[:48], y[:48], x_test, y_test, shipped,
                             StrongSettings(restarts=1, epochs=2), factor=2, batch_size=16,
                             beta=12.0, seed=0)
    optimum = evasion_rate(model, x_test, y_test, (EPS * torch.sign(w)).reshape(SHAPE))
    assert optimum > shipped_rate
    (row,) = rows
    assert row["long_run_evasion_rate"] == pytest.approx(optimum)
    assert row["gap"] == pytest.approx(optimum - shipped_rate)
    assert row["shipped_worst_member"] == "paper#0"


def test_summary_names_the_largest_gap():
    results = [{"dataset": "d", "lambda": lam, "seed": 0, "factor": 10,
                "per_eps": [{"eps": e, "shipped_worst_member": "strong#1",
                             "shipped_worst_evasion_rate": 0.5, "long_run_evasion_rate": 0.5 + g,
                             "gap": g} for e, g in ((0.1, 0.01), (0.3, gap))]}
               for lam, gap in ((0.0, -0.02), (1.0, 0.07))]
    summary = summarize(results)["d"]
    assert summary["factor"] == 10 and len(summary["rows"]) == 4
    assert (summary["largest_gap"]["lambda"], summary["largest_gap"]["eps"]) == (1.0, 0.3)
    assert summary["largest_gap"]["gap"] == pytest.approx(0.07)
