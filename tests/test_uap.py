"""Tests for :func:`jacreg.uap.sgd_uap` on linear classifiers whose optimal UAP is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacreg.models import SmallCNN
from jacreg.uap import sgd_uap

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 4, 4)
D = 16
EPS = 0.2


def _two_class_problem(n: int = 64, seed: int = 0):
    """Logits [0, w.x + b]; every input in [0.25, 0.75] is class 0 with a negative margin.

    The L-infinity UAP that maximizes the class-1 logit for every input at once is eps*sign(w),
    raising w.x by eps*||w||_1; b is set so that it flips about half of the inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=gen)
    w[w.abs() < 0.1] += 0.5  # no (near-)zero entries: sign(w) is unambiguous
    x = 0.25 + 0.5 * torch.rand((n, *SHAPE), generator=gen)
    scores = x.reshape(n, -1) @ w
    gain = EPS * float(w.abs().sum())
    b = -float(scores.max()) - 0.5 * gain
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1] = w
        model[1].bias[1] = b
    y = torch.zeros(n, dtype=torch.long)
    assert bool((scores + b < 0).all())  # negative margin: all clean inputs are class 0
    return model, x, y, w, b


def _evasion(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model((x + v).clamp(0, 1)).argmax(1) != y).float().mean())


def test_untargeted_uap_on_linear_model_is_eps_sign_w():
    model, x, y, w, b = _two_class_problem()
    v = sgd_uap(model, x, y, eps=EPS, epochs=2, batch_size=32, seed=0)
    assert v.shape == SHAPE
    optimal = (EPS * torch.sign(w)).reshape(SHAPE)
    torch.testing.assert_close(v, optimal, rtol=0, atol=1e-7)
    assert float(v.abs().max()) <= EPS + 1e-7
    adv = x + v
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0  # no clipping happened
    # evasion rate computed independently from the closed form: w.x + b + eps ||w||_1 > 0
    analytic = float(((x.reshape(len(x), -1) @ w + b + EPS * w.abs().sum()) > 0).float().mean())
    assert 0.0 < analytic < 1.0
    assert _evasion(model, x, y, v) == pytest.approx(analytic)


def test_targeted_uap_moves_predictions_to_the_target():
    model, x, y, w, _ = _two_class_problem(seed=1)
    v = sgd_uap(model, x, y, eps=EPS, epochs=2, batch_size=32, target_class=1)
    with torch.no_grad():
        before = (model(x).argmax(1) == 1).float().mean()
        after = (model((x + v).clamp(0, 1)).argmax(1) == 1).float().mean()
    assert float(before) == 0.0 and float(after) > 0.0
    # minimizing CE towards class 1 also means maximizing w.v: the same optimum
    torch.testing.assert_close(v, (EPS * torch.sign(w)).reshape(SHAPE), rtol=0, atol=1e-7)


def test_targeted_uap_three_classes():
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn((3, D), generator=gen))
        model[1].bias.zero_()
    x = torch.rand((96, *SHAPE), generator=gen)
    with torch.no_grad():
        clean_logits = model(x)
    clean = clean_logits.argmax(1)
    target = int(torch.bincount(clean, minlength=3).argmin())
    v = sgd_uap(model, x, clean, eps=0.2, epochs=3, batch_size=32, target_class=target)
    assert float(v.abs().max()) <= 0.2 + 1e-7
    with torch.no_grad():
        adv_logits = model((x + v).clamp(0, 1))
    adv = adv_logits.argmax(1)
    assert float((adv == target).float().mean()) > float((clean == target).float().mean())
    p_clean = clean_logits.softmax(1)[:, target].mean()
    p_adv = adv_logits.softmax(1)[:, target].mean()
    assert float(p_adv) > float(p_clean)
    # and an untargeted UAP of the same budget is a different perturbation
    untargeted = sgd_uap(model, x, clean, eps=0.2, epochs=3, batch_size=32)
    assert not torch.equal(untargeted, v)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_eps_outside_unit_interval_raises(eps):
    model, x, y, _, _ = _two_class_problem(n=8)
    with pytest.raises(ValueError, match="eps"):
        sgd_uap(model, x, y, eps=eps, epochs=1)


def test_eps_of_one_is_allowed_and_outputs_stay_in_range():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.rand((16, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    v = sgd_uap(model, x, y, eps=1.0, epochs=1, batch_size=8)
    assert float(v.abs().max()) <= 1.0
    adv = (x + v).clamp(0, 1)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_model_parameters_mode_and_requires_grad_are_restored():
    torch.manual_seed(0)
    model = SmallCNN()
    model.features[0].bias.requires_grad_(False)  # frozen before: must stay frozen
    model.train()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    x = torch.rand((24, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(4))
    v = sgd_uap(model, x, y, eps=0.1, epochs=1, batch_size=8)
    assert float(v.abs().max()) > 0
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_gives_identical_perturbation():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand((40, 1, 28, 28), generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(6))
    runs = [sgd_uap(model, x, y, eps=0.1, epochs=2, batch_size=16, seed=7) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert float(runs[0].abs().max()) <= 0.1 + 1e-7
    assert not model.training
