"""Tests for :mod:`jacreg.pgd`: a known answer on a linear classifier, the constraints, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacreg.metrics import predict
from jacreg.pgd import pgd_attack


def _linear_binary(d: int = 20, seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Logits W x + b of a 2-class linear model, inputs in [0, 1], labels = clean predictions."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=gen) * 0.5)
        model.bias.copy_(torch.tensor([0.3, -0.3]))
    x = torch.rand(400, d, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _optimal_perturbation(model: nn.Linear, x: torch.Tensor, y: torch.Tensor,
                          eps: float) -> torch.Tensor:
    """The exact minimizer of the true class's margin over the eps ball within [0, 1]^d.

    The margin (w_y - w_o) . x + (b_y - b_o) is linear and the constraint set a box, so the
    minimizer is the corner x - eps * sign(w_y - w_o), clipped to [0, 1], coordinate by coordinate.
    """
    w = model.weight.detach()
    direction = w[y] - w[1 - y]
    return (x - eps * direction.sign()).clamp(0.0, 1.0)


@pytest.mark.parametrize("eps", [0.03, 0.06, 0.1])
def test_pgd_reaches_the_analytic_optimum_on_a_linear_classifier(eps: float) -> None:
    model, x, y = _linear_binary()
    optimum = _optimal_perturbation(model, x, y, eps)
    analytic_rate = float((predict(model, optimum) != y).float().mean())
    assert 0.05 < analytic_rate < 0.95, "a case where the answer is not trivial"

    adv = pgd_attack(model, x, y, eps, steps=20, seed=3, batch_size=64)
    # every sign step points at the optimal corner; 20 steps of 2.5 eps / 20 cover the 2 eps
    # from any random start, and the projection lands exactly on it
    assert torch.allclose(adv, optimum, atol=1e-6)
    assert float((predict(model, adv) != y).float().mean()) == pytest.approx(analytic_rate)
    # the random start alone does not get there: the steps do the work
    start_only = pgd_attack(model, x, y, eps, steps=0, seed=3, batch_size=64)
    assert float((predict(model, start_only) != y).float().mean()) < analytic_rate


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 10))


@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_outputs_stay_in_the_eps_ball_and_the_unit_box(eps: float) -> None:
    model = _small_cnn()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(50, 1, 12, 12, generator=gen)
    x[:10] = (x[:10] > 0.5).float()  # pixels at 0 and 1: the box constraint binds
    y = torch.randint(0, 10, (50,), generator=gen)
    adv = pgd_attack(model, x, y, eps, steps=5, seed=0, batch_size=16)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device.type == "cpu"
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) > 0.5 * eps  # it moved


def test_seeded_and_leaves_the_model_as_it_was() -> None:
    model = _small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(20, 1, 12, 12, generator=gen), torch.randint(0, 10, (20,), generator=gen)
    first = pgd_attack(model, x, y, 0.1, steps=3, seed=5, batch_size=8)
    again = pgd_attack(model, x, y, 0.1, steps=3, seed=5, batch_size=8)
    other = pgd_attack(model, x, y, 0.1, steps=3, seed=6, batch_size=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the random start follows the seed
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pgd_beats_the_clean_model_and_rejects_bad_eps() -> None:
    model, x, y = _linear_binary(seed=1)
    adv = pgd_attack(model, x, y, 0.1)
    assert float((predict(model, adv) != y).float().mean()) > 0.0  # y = clean predictions
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(model, x, y, 0.0)
    with pytest.raises(ValueError, match="steps"):
        pgd_attack(model, x, y, 0.1, steps=-1)
