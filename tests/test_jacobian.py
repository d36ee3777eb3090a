"""Tests for :mod:`jacreg.jacobian` against closed forms, autograd and explicit SVDs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jacreg.jacobian import (
    class_pair_matrix,
    jacobian_penalty,
    jacobian_statistics,
    linearized_logit_change,
    pairwise_shared_metric,
    per_sample_jacobians,
    sample_pairs,
    stacked_spectral_norm,
)
from jacreg.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 3, 4)  # input (C, H, W); d = 12
D = 12
K = 5


def _linear_model(seed: int = 0, classes: int = K) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, classes))


def _inputs(n: int, seed: int = 1, requires_grad: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=gen).requires_grad_(requires_grad)


def _cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def _cnn_inputs(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- jacobian_penalty


def test_exact_penalty_is_half_squared_frobenius_of_linear_weights():
    model = _linear_model()
    weight = model[1].weight
    x = _inputs(7)
    penalty = jacobian_penalty(x, model(x), n_proj=-1)
    expected = 0.5 * float(weight.detach().pow(2).sum())
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_exact_penalty_gradient_is_w():
    # d/dW 1/2 ||W||_F^2 = W; the batch mean of identical terms leaves it unchanged.
    model = _linear_model()
    weight = model[1].weight
    x = _inputs(4)
    jacobian_penalty(x, model(x), n_proj=-1).backward()
    assert weight.grad is not None
    torch.testing.assert_close(weight.grad, weight.detach(), rtol=1e-5, atol=1e-6)


def test_random_projection_penalty_is_unbiased_over_many_draws():
    model = _linear_model()
    exact = 0.5 * float(model[1].weight.detach().pow(2).sum())
    x = _inputs(1).detach().expand(4000, *SHAPE).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(123)
    estimate = float(jacobian_penalty(x, model(x), n_proj=1, generator=gen).detach())
    assert estimate == pytest.approx(exact, rel=0.05)
    # a single draw is not the exact value: the test above really averages random draws
    one = _inputs(1)
    single = float(jacobian_penalty(one, model(one), n_proj=1,
                                    generator=torch.Generator().manual_seed(5)).detach())
    assert single != pytest.approx(exact, rel=1e-3)


def test_random_projection_penalty_is_differentiable():
    # For a linear model R(W) = 1/2 tr(W^T M W) with M from the random directions: R is
    # homogeneous of degree 2 in W, so <dR/dW, W> = 2 R exactly (Euler), and E[dR/dW] = W.
    model = _linear_model()
    weight = model[1].weight
    x = _inputs(1).detach().expand(4000, *SHAPE).clone().requires_grad_(True)
    penalty = jacobian_penalty(x, model(x), n_proj=1, generator=torch.Generator().manual_seed(9))
    penalty.backward()
    grad = weight.grad
    assert grad is not None
    assert float((grad * weight.detach()).sum()) == pytest.approx(2 * float(penalty.detach()),
                                                                rel=1e-4)
    rel = float((grad - weight.detach()).norm() / weight.detach().norm())
    assert rel < 0.1


def test_same_generator_seed_gives_same_penalty_and_more_projections_is_closer():
    model = _linear_model()
    exact = 0.5 * float(model[1].weight.detach().pow(2).sum())
    x = _inputs(50)

    def est(n_proj: int, seed: int) -> float:
        xx = x.detach().clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(seed)
        return float(jacobian_penalty(xx, model(xx), n_proj=n_proj, generator=gen).detach())

    assert est(2, 7) == est(2, 7)
    errors_1 = [abs(est(1, s) - exact) for s in range(20)]
    errors_40 = [abs(est(40, s) - exact) for s in range(20)]
    assert sum(errors_40) < sum(errors_1)


def test_penalty_rejects_bad_arguments():
    model = _linear_model()
    x = _inputs(2, requires_grad=False)
    with pytest.raises(ValueError, match="requires_grad"):
        jacobian_penalty(x, model(x), n_proj=-1)
    xg = _inputs(2)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="n_proj"):
            jacobian_penalty(xg, model(xg), n_proj=bad)


# ----------------------------------------------------------------------- per_sample_jacobians


def test_per_sample_jacobians_of_linear_model_equal_w():
    model = _linear_model()
    jac = per_sample_jacobians(model, _inputs(6, requires_grad=False), batch_size=4)
    assert jac.shape == (6, K, D)
    for j in jac:
        torch.testing.assert_close(j, model[1].weight.detach(), rtol=1e-6, atol=1e-7)


def test_per_sample_jacobians_match_autograd_for_cnn():
    model = _cnn()
    x = _cnn_inputs(5)
    jac = per_sample_jacobians(model, x, batch_size=2)  # chunks of 2, 2, 1
    assert jac.shape == (5, 10, 28 * 28)
    for i in range(5):
        ref = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[i])
        torch.testing.assert_close(jac[i], ref.reshape(10, -1), rtol=1e-4, atol=1e-6)
    assert float(jac.abs().max()) > 0


# ------------------------------------------------------------------------ jacobian_statistics


@pytest.mark.parametrize("n,k,d", [(4, 3, 5), (2, 3, 10)], ids=["d<=NK", "d>NK"])
def test_jacobian_statistics_match_svd(n, k, d):
    gen = torch.Generator().manual_seed(n * 100 + d)
    jac = torch.randn((n, k, d), generator=gen, dtype=torch.float64)
    stats = jacobian_statistics(jac)

    for i in range(n):
        _, s, vh = torch.linalg.svd(jac[i])
        assert float(stats.spectral[i]) == pytest.approx(float(s[0]), rel=1e-5)
        assert float(stats.frobenius[i]) == pytest.approx(float(jac[i].norm()), rel=1e-5)
        assert abs(float(stats.top_right_vectors[i].double() @ vh[0])) == pytest.approx(1, abs=1e-5)
        torch.testing.assert_close(stats.grams[i], jac[i] @ jac[i].T)

    flat = jac.reshape(n * k, d)  # materialized stacked Jacobian J_X
    _, s, vh = torch.linalg.svd(flat)
    assert stats.stacked_spectral == pytest.approx(float(s[0]), rel=1e-6)
    assert stats.stacked_frobenius == pytest.approx(float(flat.norm()), rel=1e-6)
    assert stats.stacked_frobenius == pytest.approx(float(s.pow(2).sum().sqrt()), rel=1e-6)
    top = stats.stacked_top_vector.double()
    assert float(top.norm()) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(top @ vh[0])) == pytest.approx(1.0, abs=1e-5)


def test_jacobian_statistics_of_identical_linear_jacobians():
    # J_X = [W; ...; W] (N copies): ||J_X||_2 = sqrt(N) ||W||_2, ||J_X||_F = sqrt(N) ||W||_F
    w = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    stats = jacobian_statistics(w.expand(4, 2, 3))
    assert stats.stacked_spectral == pytest.approx(2 * 3.0)
    assert stats.stacked_frobenius == pytest.approx(2 * math.sqrt(13.0))
    torch.testing.assert_close(stats.spectral, torch.full((4,), 3.0))
    torch.testing.assert_close(stats.stacked_top_vector.abs(), torch.tensor([1.0, 0.0, 0.0]))


# ---------------------------------------------------------------------- stacked_spectral_norm


def test_stacked_spectral_norm_power_exact_and_svd_agree():
    model = _cnn(3)
    x = _cnn_inputs(6, seed=4)
    jac = torch.stack([
        torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi).reshape(10, -1)
        for xi in x
    ]).double()
    svd = float(torch.linalg.svdvals(jac.reshape(-1, jac.shape[-1]))[0])
    exact = stacked_spectral_norm(model, x, method="exact", batch_size=4)
    power = stacked_spectral_norm(model, x, method="power", iters=120, batch_size=4)
    auto = stacked_spectral_norm(model, x, method="auto")
    assert exact == pytest.approx(svd, rel=1e-3)
    assert power == pytest.approx(svd, rel=1e-3)
    assert power == pytest.approx(exact, rel=1e-3)
    assert auto == pytest.approx(exact, rel=1e-6)


def test_stacked_spectral_norm_of_linear_model():
    model = _linear_model(classes=3)
    x = _inputs(5, requires_grad=False)
    expected = math.sqrt(5) * float(torch.linalg.svdvals(model[1].weight.detach().double())[0])
    assert stacked_spectral_norm(model, x, method="exact") == pytest.approx(expected, rel=1e-5)
    assert stacked_spectral_norm(model, x, method="power", iters=200) == pytest.approx(
        expected, rel=1e-3)
    # "auto" switches to power iteration above max_exact_dim
    assert stacked_spectral_norm(model, x, method="auto", max_exact_dim=4,
                                 iters=200) == pytest.approx(expected, rel=1e-3)


def test_stacked_spectral_norm_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        stacked_spectral_norm(_linear_model(), _inputs(2, requires_grad=False), method="lanczos")


# --------------------------------------------------------------------- pairwise shared metric


def _rank_one(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return torch.outer(a, u)


def test_shared_metric_is_one_for_identical_jacobians():
    j = torch.randn((3, 6), generator=torch.Generator().manual_seed(0))
    jac = torch.stack([j, j, 2 * j])
    stats = jacobian_statistics(jac)
    scores, cosines = pairwise_shared_metric(jac, stats, torch.tensor([[0, 1], [1, 0], [0, 2]]))
    torch.testing.assert_close(scores, torch.ones(3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cosines, torch.ones(3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_a,norm_b,expected", [(1.0, 1.0, 0.5), (2.0, 1.0, 0.8),
                                                    (1.0, 3.0, 0.9)])
def test_shared_metric_of_orthogonal_rank_one_jacobians(norm_a, norm_b, expected):
    d = 6
    u = torch.zeros(d)
    u[1] = 1.0
    w = torch.zeros(d)
    w[4] = 1.0
    a = torch.tensor([norm_a, 0.0, 0.0])
    b = torch.tensor([0.0, norm_b * 0.6, norm_b * 0.8])  # ||b|| = norm_b
    jac = torch.stack([_rank_one(a, u), _rank_one(b, w)])
    assert expected == pytest.approx(max(norm_a, norm_b) ** 2 / (norm_a ** 2 + norm_b ** 2))
    stats = jacobian_statistics(jac)
    scores, cosines = pairwise_shared_metric(jac, stats, torch.tensor([[0, 1], [1, 0]]))
    torch.testing.assert_close(scores, torch.full((2,), expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cosines, torch.zeros(2), rtol=0, atol=1e-6)


def test_shared_metric_matches_svd_of_stacked_pair_for_random_jacobians():
    gen = torch.Generator().manual_seed(11)
    jac = torch.randn((6, 3, 8), generator=gen)
    stats = jacobian_statistics(jac)
    pairs = sample_pairs(6, 25, torch.Generator().manual_seed(1))
    scores, cosines = pairwise_shared_metric(jac, stats, pairs, chunk=7)
    for p, (i, j) in enumerate(pairs.tolist()):
        ji, jj = jac[i].double(), jac[j].double()
        joint = float(torch.linalg.svdvals(torch.cat([ji, jj]))[0]) ** 2
        si = float(torch.linalg.svdvals(ji)[0]) ** 2
        sj = float(torch.linalg.svdvals(jj)[0]) ** 2
        assert float(scores[p]) == pytest.approx(joint / (si + sj), rel=1e-5)
        assert 0.5 - 1e-6 <= float(scores[p]) <= 1 + 1e-6
        vi = torch.linalg.svd(ji).Vh[0]
        vj = torch.linalg.svd(jj).Vh[0]
        assert float(cosines[p]) == pytest.approx(abs(float(vi @ vj)), abs=1e-5)


def test_class_pair_matrix_of_orthogonal_classes():
    # class c: every Jacobian is (c + 1) e_0 u_c^T with orthonormal u_c -> s = 1 within a
    # class and max(n_a^2, n_b^2) / (n_a^2 + n_b^2) across classes.
    classes, per_class, d = 3, 4, 5
    eye = torch.eye(d)
    jac, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            jac.append(_rank_one(torch.tensor([c + 1.0, 0.0]), eye[c]))
            labels.append(c)
    jac_t, labels_t = torch.stack(jac), torch.tensor(labels)
    stats = jacobian_statistics(jac_t)
    matrix = class_pair_matrix(jac_t, stats, labels_t, num_classes=4, per_cell=6,
                               generator=torch.Generator().manual_seed(0))
    assert matrix.shape == (4, 4)
    assert torch.isnan(matrix[3]).all() and torch.isnan(matrix[:, 3]).all()  # empty class
    block = matrix[:3, :3]
    torch.testing.assert_close(block, block.T)
    for a in range(3):
        for b in range(3):
            na, nb = (a + 1.0) ** 2, (b + 1.0) ** 2
            expected = 1.0 if a == b else max(na, nb) / (na + nb)
            assert float(block[a, b]) == pytest.approx(expected, rel=1e-5)


def test_class_pair_matrix_is_symmetric_with_entries_in_unit_interval():
    gen = torch.Generator().manual_seed(3)
    jac = torch.randn((15, 4, 7), generator=gen)
    labels = torch.arange(15) % 3
    stats = jacobian_statistics(jac)
    matrix = class_pair_matrix(jac, stats, labels, num_classes=3, per_cell=8,
                               generator=torch.Generator().manual_seed(1))
    assert not torch.isnan(matrix).any()
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=0)
    assert bool(((matrix > 0) & (matrix <= 1 + 1e-6)).all())


# ------------------------------------------------------------- linearized change, sample pairs


def test_linearized_logit_change_by_hand_and_bounds():
    gen = torch.Generator().manual_seed(4)
    jac = torch.randn((5, 3, 12), generator=gen)
    v = torch.randn((1, 3, 4), generator=gen)  # shaped like an input
    expected = math.sqrt(sum(float((jac[i] @ v.reshape(-1)).pow(2).sum()) for i in range(5)))
    got = linearized_logit_change(jac, v)
    assert got == pytest.approx(expected, rel=1e-6)
    stats = jacobian_statistics(jac)
    vn = float(v.norm())
    assert got <= stats.stacked_spectral * vn * (1 + 1e-6)
    assert stats.stacked_spectral <= stats.stacked_frobenius
    # the top singular vector attains the spectral bound
    assert linearized_logit_change(jac, stats.stacked_top_vector) == pytest.approx(
        stats.stacked_spectral, rel=1e-5)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_sample_pairs_never_pairs_an_index_with_itself(n):
    pairs = sample_pairs(n, 2000, torch.Generator().manual_seed(n))
    assert pairs.shape == (2000, 2)
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    assert int(pairs.min()) >= 0 and int(pairs.max()) < n
    # every ordered pair i != j occurs
    assert len({tuple(p) for p in pairs.tolist()}) == n * (n - 1)
