"""Tests for :mod:`jacreg.attack_suite` and :mod:`jacreg.attack_checks`: known optima on linear
classifiers, a zero start that stalls, worst-case selection that never reads the test split,
masked gradients that the sanity checks catch, and the per-seed suite on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_uap import _two_class_problem
from torch import nn

from jacreg.attack_checks import LARGE_BUDGET_MIN, half_width, model_checks
from jacreg.attack_suite import (
    StrongSettings,
    choose_worst,
    evaluate_suite,
    evasion_rate,
    family_rates,
    member_names,
    member_replicate,
    replicate_seed,
    score_members,
    strong_uap,
    warm_start_uap,
)
from jacreg.data import to_float
from jacreg.io import load_torch, save_torch
from jacreg.metrics import predict
from jacreg.models import build_model, save_checkpoint
from jacreg.uap import sgd_uap

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 4, 4)
D = 16
EPS = 0.2
FAST = StrongSettings(restarts=2, epochs=3, check_epochs=1)


def _linear_two_class(seed: int = 0, n: int = 96):
    """Logits [0, w.x + b] with every clean input class 0; the optimal L-inf UAP is eps sign(w)
    (it raises w.x by eps ||w||_1 for every input at once): the problem of tests/test_uap.py."""
    return _two_class_problem(n=n, seed=seed)


class _DeadAtZero(nn.Module):
    """Class-1 logit 10 relu(u.x - c) - 1: no input is class 1 and the ReLU is dead on every
    clean input, so the gradient at the zero start is exactly zero; a shift of eps * sign(u)
    wakes it up for the inputs with large u.x."""

    def __init__(self, u: torch.Tensor, c: float):
        super().__init__()
        self.u, self.c = nn.Parameter(u.clone()), c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.reshape(len(x), -1) @ self.u
        return torch.stack([torch.zeros_like(s), 10.0 * torch.relu(s - self.c) - 1.0], dim=1)


class _Rounding(nn.Module):
    """A masked-gradient model: a linear classifier on round(x). d round / dx = 0 everywhere
    torch differentiates it, so every gradient-based attack on it sees a zero gradient."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.round(x))


def test_strong_reaches_the_known_optimum_of_a_linear_classifier():
    model, x, y, w, b = _linear_two_class()
    result = strong_uap(model, x, y, EPS, FAST, batch_size=32, seed=0)
    optimal = (EPS * torch.sign(w)).reshape(SHAPE)
    assert result.uap.shape == SHAPE
    analytic = float(((x.reshape(len(x), -1) @ w + b + EPS * w.abs().sum()) > 0).float().mean())
    assert 0.0 < analytic < 1.0
    assert result.crafting_evasion_rate == pytest.approx(analytic)
    assert evasion_rate(model, x, y, optimal) == pytest.approx(analytic)
    # no L-inf UAP of budget eps can do better than the optimum
    assert float(result.uap.abs().max()) <= EPS + 1e-6
    assert len(result.per_start) == (FAST.restarts + 1) * len(FAST.losses)


def test_strong_beats_paper_where_the_zero_start_stalls():
    gen = torch.Generator().manual_seed(3)
    x = 0.25 + 0.5 * torch.rand((200, *SHAPE), generator=gen)
    u = torch.ones(D)
    s = x.reshape(len(x), -1) @ u
    c = float(s.max()) + 0.05  # dead ReLU on every clean input
    model = _DeadAtZero(u, c)
    y = torch.zeros(len(x), dtype=torch.long)
    assert float(evasion_rate(model, x, y, None)) == 0.0
    paper = sgd_uap(model, x, y, EPS, epochs=3, batch_size=50)
    assert torch.count_nonzero(paper) == 0  # zero gradient: the authors' attack never moves
    assert evasion_rate(model, x, y, paper) == 0.0
    strong = strong_uap(model, x, y, EPS, StrongSettings(restarts=3, epochs=3), batch_size=50)
    expected = float(((s + EPS * D - c) * 10.0 - 1.0 > 0).float().mean())  # at eps * sign(u)
    assert expected > 0.5
    assert strong.start >= 1  # a random start found it
    assert strong.crafting_evasion_rate == pytest.approx(expected)


def test_warm_start_climbs_from_a_transfer_and_never_falls_below_it():
    """Started from the worst possible UAP of a linear classifier (-eps sign(w)), the warm start
    climbs to the analytic optimum on the model itself; started from the optimum, it keeps it."""
    model, x, y, w, b = _linear_two_class()
    analytic = float(((x.reshape(len(x), -1) @ w + b + EPS * w.abs().sum()) > 0).float().mean())
    settings = StrongSettings(warm_epochs=3)
    bad = (-EPS * torch.sign(w)).reshape(SHAPE)
    assert evasion_rate(model, x, y, bad) < analytic
    climbed = warm_start_uap(model, x, y, EPS, bad, settings, batch_size=32)
    assert climbed.crafting_evasion_rate == pytest.approx(analytic)
    assert climbed.loss == "margin" and len(climbed.per_start) == 1
    best = (EPS * torch.sign(w)).reshape(SHAPE)
    kept = warm_start_uap(model, x, y, EPS, best, StrongSettings(warm_epochs=1), batch_size=32)
    assert kept.crafting_evasion_rate >= evasion_rate(model, x, y, best)


def test_strong_keeps_the_best_iterate_never_worse_than_its_start():
    model, x, y, _, _ = _linear_two_class(seed=5)
    result = strong_uap(model, x, y, EPS, StrongSettings(restarts=1, epochs=1), batch_size=32)
    assert result.crafting_evasion_rate >= evasion_rate(model, x, y, None)
    assert result.crafting_evasion_rate == pytest.approx(evasion_rate(model, x, y, result.uap))
    assert result.crafting_evasion_rate == max(result.per_start)


def test_worst_is_never_below_any_member_on_the_attack_split():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        rates = {name: float(torch.rand((), generator=gen).round(decimals=1))
                 for name in ["paper", "strong", "transfer:0", "transfer:1"]}
        worst = choose_worst(rates)
        assert all(rates[worst] >= value for value in rates.values())
        first_max = next(n for n in rates if rates[n] == max(rates.values()))
        assert worst == first_max  # ties: the earlier member


def test_worst_is_chosen_without_reading_the_test_split():
    model, x, y, w, _ = _linear_two_class(seed=1)
    optimal = (EPS * torch.sign(w)).reshape(SHAPE)
    members = {"paper": torch.zeros(SHAPE), "strong": optimal, "transfer:1": -optimal}
    x_test, y_test = x.clone(), y.clone()
    first = score_members(model, members, x, y, x_test, y_test)
    assert first["worst"] == "strong"
    # a test split on which another member is best does not change the choice ...
    flipped = torch.ones_like(y_test)  # "labels" that only the do-nothing member keeps wrong
    second = score_members(model, members, x, y, x_test, flipped)
    assert max(second["test_rates"], key=second["test_rates"].get) != "strong"
    assert second["worst"] == "strong"
    # ... and neither does a test split of garbage with other shapes of batches
    garbage = torch.rand((7, *SHAPE))
    third = score_members(model, members, x, y, garbage, torch.zeros(7, dtype=torch.long))
    assert third["worst"] == "strong"
    assert first["attack_rates"] == second["attack_rates"] == third["attack_rates"]
    assert second["test_evaded"]["paper"].dtype == torch.bool


def test_masked_gradients_trip_the_transfer_and_large_budget_checks():
    model, x, y, w, b = _linear_two_class(seed=2, n=200)
    masked = _Rounding(model)
    x_att, y_att, x_test, y_test = x[:100], y[:100], x[100:], y[100:]
    settings = StrongSettings(restarts=2, epochs=2, check_epochs=1)
    records, random_rates = [], {}
    noise = torch.Generator().manual_seed(1)
    for eps in (0.1, 0.3):
        own_paper = sgd_uap(masked, x_att, y_att, eps, epochs=2, batch_size=50)
        own_strong = strong_uap(masked, x_att, y_att, eps, settings, batch_size=50).uap
        twin = sgd_uap(model, x_att, y_att, eps, epochs=2, batch_size=50)  # unmasked twin
        members = {"paper": own_paper, "strong": own_strong, "transfer:0": twin}
        scored = score_members(masked, members, x_att, y_att, x_test, y_test)
        scored.pop("test_evaded")
        records.append({"eps": eps, **scored})
        v = (torch.randint(0, 2, SHAPE, generator=noise).float() * 2 - 1) * eps
        random_rates[eps] = evasion_rate(masked, x_test, y_test, v)
    check_uap = strong_uap(masked, x_att, y_att, 1.0, settings, batch_size=50, restarts=0,
                           epochs=settings.check_epochs).uap
    large = {"eps": 1.0, "test_evasion_rate": evasion_rate(masked, x_test, y_test, check_uap)}
    checks = {c["name"]: c for c in model_checks(records, random_rates, large, len(y_test))}
    assert not checks["transfer_below_strong"]["passed"]
    assert "transfer:0" in checks["transfer_below_strong"]["where"][0]
    assert not checks["large_budget"]["passed"]
    assert large["test_evasion_rate"] < LARGE_BUDGET_MIN
    # the same checks on the unmasked model pass: the flags come from the masking
    plain_records = []
    for eps in (0.1, 0.3):
        members = {"paper": sgd_uap(model, x_att, y_att, eps, epochs=2, batch_size=50),
                   "strong": strong_uap(model, x_att, y_att, eps, settings, batch_size=50).uap}
        scored = score_members(model, members, x_att, y_att, x_test, y_test)
        scored.pop("test_evaded")
        plain_records.append({"eps": eps, **scored})
    plain = {c["name"]: c for c in model_checks(plain_records, {}, None, len(y_test))}
    assert plain["transfer_below_strong"]["passed"] and plain["monotone_in_eps"]["passed"]


def _record(eps: float, rates: dict[str, float], worst: str) -> dict:
    return {"eps": eps, "test_rates": rates, "attack_rates": rates, "worst": worst}


def test_model_checks_flag_each_failure_with_where_it_failed():
    n = 1000
    records = [_record(0.1, {"paper": 0.40, "strong": 0.30, "transfer:0": 0.20}, "paper"),
               _record(0.2, {"paper": 0.20, "strong": 0.35, "transfer:0": 0.50}, "transfer:0")]
    random_rates = {0.1: 0.35, 0.2: 0.10}
    checks = {c["name"]: c for c in model_checks(
        records, random_rates, {"eps": 1.0, "test_evasion_rate": 0.95}, n)}
    assert checks["monotone_in_eps"]["where"] == ["paper: 0.4000 at eps=0.1 > 0.2000 at eps=0.2"]
    assert checks["transfer_below_strong"]["where"][0].startswith("eps=0.2: transfer:0 0.5000")
    assert checks["above_random"]["where"] == ["eps=0.1: strong 0.3000 <= random 0.3500"]
    assert checks["large_budget"]["passed"]
    # a drop within the rate's interval is not a flag
    small = [_record(0.1, {"paper": 0.40}, "paper"), _record(0.2, {"paper": 0.39}, "paper")]
    assert 0.01 < half_width(0.40, n)
    assert model_checks(small, {}, None, n)[0]["passed"]


def test_member_names_order():
    assert member_names([1.0, 0.0, 0.5], own=0.5) == ["paper#0", "strong#0", "transfer:0",
                                                       "transfer:1"]
    assert member_names([0.0, 1.0], own=0.0, replicates=3) == [
        "paper#0", "paper#1", "paper#2", "strong#0", "strong#1", "strong#2", "transfer:1"]
    assert member_names([0.0, 1.0], own=1.0, replicates=2, strong=False) == [
        "paper#0", "paper#1", "transfer:0"]
    assert [member_replicate(m) for m in ("paper#2", "strong#0", "transfer:0.1")] == [2, 0, -1]
    assert family_rates({"paper#0": 0.2, "paper#1": 0.4, "strong#0": 0.5,
                         "transfer:1": 0.1}) == pytest.approx(
        {"paper": 0.3, "strong": 0.5, "transfer:1": 0.1})


def test_replicate_seeds_are_distinct_and_replicate_zero_is_the_model_seed():
    seeds = {replicate_seed(s, r) for s in range(100) for r in range(50)}
    assert len(seeds) == 100 * 50
    assert replicate_seed(7, 0) == 7


def _checkpoint(path: Path, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn_small")
    save_checkpoint(model, path, "cnn_small",
                    {"in_channels": 1, "num_classes": 10, "image_size": 28})
    return model.eval()


def test_evaluate_suite_from_files(tmp_path: Path, mnist5k) -> None:
    data_path, tensors = mnist5k
    x_test, y_test = to_float(tensors["x_test"]), tensors["y_test"]
    x_att, y_att = to_float(tensors["x_attack"][:300]), tensors["y_attack"][:300]
    lambdas, eps, n_rep = [1.0, 0.0], [0.3, 0.1], 2  # out of order: the suite sorts both
    models, ckpts, files, paper, strong = [], [], [], [], []
    for i, lam in enumerate(lambdas):
        ckpts.append(tmp_path / f"lam{lam:g}.pt")
        files.append(tmp_path / f"uap{lam:g}.pt")
        models.append(_checkpoint(ckpts[-1], seed=i))
        gen = torch.Generator().manual_seed(i)
        paper.append(torch.stack([torch.stack([(torch.rand(1, 28, 28, generator=gen) * 2 - 1) * e
                                               for e in eps]) for _ in range(n_rep)]))
        strong.append(torch.stack([torch.stack([torch.sign(torch.randn(1, 28, 28, generator=gen))
                                                * e for e in eps]) for _ in range(n_rep)]))
        save_torch({"eps": torch.tensor(eps, dtype=torch.float64), "uaps": paper[-1],
                    "strong_uaps": strong[-1], "check_eps": 1.0, "replicates": n_rep,
                    "check_uap": torch.ones(1, 28, 28), "check_crafting_evasion_rate": 0.9,
                    "strong_info": []}, files[-1])
    summary, outcomes = evaluate_suite(ckpts, files, lambdas, str(data_path), "mnist5k", 0, 300,
                                       500, torch.device("cpu"))
    assert summary["lambdas"] == [0.0, 1.0] and summary["eps_list"] == [0.1, 0.3]
    assert summary["eps"] == 0.3 and summary["replicates"] == n_rep
    order = [1, 0]  # index into the given lists of lambda 0, lambda 1
    for t in range(2):
        model = models[order[t]]
        record = summary["models"][t]
        other = order[1 - t]
        assert outcomes["members"][t] == [
            "paper#0", "paper#1", "strong#0", "strong#1", f"transfer:{lambdas[other]:g}"]
        assert outcomes["member_replicate"][t].tolist() == [0, 1, 0, 1, -1]
        for k, e in enumerate([0.1, 0.3]):
            stored = eps.index(e)
            rec = record["per_eps"][k]
            expected = {"paper#0": paper[order[t]][0, stored],
                        "paper#1": paper[order[t]][1, stored],
                        "strong#0": strong[order[t]][0, stored],
                        "strong#1": strong[order[t]][1, stored],
                        # transfer: the other lambda's paper UAP of replicate 0
                        f"transfer:{lambdas[other]:g}": paper[other][0, stored]}
            assert list(rec["test_rates"]) == list(expected)
            for m, (name, v) in enumerate(expected.items()):
                evaded = predict(model, x_test, v) != y_test
                assert rec["test_rates"][name] == float(evaded.float().mean())
                assert torch.equal(outcomes["evaded"][t, k, m].bool(), evaded)
                assert rec["attack_rates"][name] == float(
                    (predict(model, x_att, v) != y_att).float().mean())
                assert float(outcomes["attack_rates"][t, k, m]) == rec["attack_rates"][name]
            assert rec["attack_rates"][rec["worst"]] == max(rec["attack_rates"].values())
            assert rec["family_test_rates"]["paper"] == pytest.approx(
                (rec["test_rates"]["paper#0"] + rec["test_rates"]["paper#1"]) / 2)
        assert record["large_budget_check"]["test_evasion_rate"] == float(
            (predict(model, x_test, torch.ones(1, 28, 28)) != y_test).float().mean())
        assert torch.equal(outcomes["clean_correct"][t].bool(), predict(model, x_test) == y_test)
    # the transfer matrix: the eps = 0.3 paper UAP (replicate 0) of lambda a on lambda b's model
    for a in range(2):
        for b in range(2):
            v = paper[order[a]][0, eps.index(0.3)]
            assert summary["matrix"][a][b] == float(
                (predict(models[order[b]], x_test, v) != y_test).float().mean())
    # warm starts from each transfer: never below it on the attack images they are chosen on
    warm_summary, warm_outcomes = evaluate_suite(
        ckpts, files, lambdas, str(data_path), "mnist5k", 0, 300, 500, torch.device("cpu"),
        {"batch_size": 100, "beta": 12.0, "strong": {"warm_epochs": 1}})
    assert warm_summary["warm_start"] and warm_outcomes["members"][0][-1] == "warm:1"
    assert warm_outcomes["member_replicate"][0].tolist()[-1] == -1
    for t, record in enumerate(warm_summary["models"]):
        other = f"{lambdas[order[1 - t]]:g}"
        for k, rec in enumerate(record["per_eps"]):
            assert rec["attack_rates"][f"warm:{other}"] >= rec["attack_rates"][f"transfer:{other}"]
            # the other members are those of the run without warm starts
            plain = summary["models"][t]["per_eps"][k]["test_rates"]
            assert {m: r for m, r in rec["test_rates"].items() if m in plain} == plain
    # a UAP file of the format before replicates, (E, C, H, W), reads as one replicate
    old = load_torch(files[0])
    old["uaps"], old["strong_uaps"] = old["uaps"][0], old["strong_uaps"][0]
    save_torch(old, files[0])
    with pytest.raises(ValueError, match="number of attack replicates"):
        evaluate_suite(ckpts, files, lambdas, str(data_path), "mnist5k", 0, 300, 500,
                       torch.device("cpu"))
    with pytest.raises(ValueError, match="same length"):
        evaluate_suite(ckpts, files[:1], lambdas, str(data_path), "mnist5k", 0, 300, 500,
                       torch.device("cpu"))
