"""Tests for :func:`jacreg.train.train_model`: the regularizer's effect and exact resumption."""

from __future__ import annotations

import shutil

import pytest
import torch

from jacreg.data import get_spec, to_float
from jacreg.io import load_torch
from jacreg.jacobian import per_sample_jacobians
from jacreg.train import make_optimizer, train_model

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical runs need a fixed count

CPU = torch.device("cpu")
SETTINGS = {"architecture": "cnn_small", "epochs": 2, "batch_size": 64, "optimizer": "adam",
            "lr": 5e-3, "n_proj": 1, "schedule": "constant"}


@pytest.fixture(scope="module")
def small_data(mnist5k):
    _, t = mnist5k
    return to_float(t["x_train"][:256]), t["y_train"][:256]


def _mean_frobenius(model, x) -> float:
    return float(per_sample_jacobians(model, x).pow(2).sum(dim=(1, 2)).sqrt().mean())


def test_jacobian_regularization_lowers_the_jacobian_norm(small_data):
    x, y = small_data
    spec = get_spec("mnist5k")
    plain, plain_hist = train_model(x, y, spec, SETTINGS, lam=0.0, seed=0, device=CPU,
                                    progress=False)
    reg, reg_hist = train_model(x, y, spec, SETTINGS, lam=1.0, seed=0, device=CPU,
                                progress=False)
    assert not plain.training and not reg.training
    assert [h["epoch"] for h in reg_hist] == [1, 2]
    assert all(h["jacobian_penalty"] == 0.0 for h in plain_hist)
    assert all(h["jacobian_penalty"] > 0.0 for h in reg_hist)
    for h in reg_hist:  # loss = CE + lambda * penalty, averaged over the epoch
        assert h["loss"] == pytest.approx(h["cross_entropy"] + 1.0 * h["jacobian_penalty"],
                                          rel=1e-5)
        assert 0.0 <= h["train_accuracy"] <= 1.0
    # measured ratio 0.67 (one thread); 0.85 leaves room for other BLAS builds
    assert _mean_frobenius(reg, x) < 0.85 * _mean_frobenius(plain, x)


def test_training_is_deterministic_given_the_seed(small_data):
    x, y = small_data
    x, y = x[:64], y[:64]
    spec = get_spec("mnist5k")
    settings = dict(SETTINGS, epochs=1, batch_size=32)
    a, _ = train_model(x, y, spec, settings, lam=0.5, seed=3, device=CPU, progress=False)
    b, _ = train_model(x, y, spec, settings, lam=0.5, seed=3, device=CPU, progress=False)
    c, _ = train_model(x, y, spec, settings, lam=0.5, seed=4, device=CPU, progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("augment", [False, True])
def test_resumed_training_is_bit_identical(small_data, tmp_path, augment):
    x, y = small_data
    x, y = x[:128], y[:128]
    spec = get_spec("mnist5k")
    settings = dict(SETTINGS, batch_size=32, augment=augment)  # constant schedule: T_max-free
    full, full_hist = train_model(x, y, spec, settings, lam=0.5, seed=1, device=CPU,
                                  progress=False)

    state = tmp_path / "state.pt"
    train_model(x, y, spec, dict(settings, epochs=1), lam=0.5, seed=1, device=CPU,
                state_path=state, progress=False)  # "interrupted" after epoch 1
    after_one = load_torch(state)
    assert after_one["epoch"] == 1 and len(after_one["history"]) == 1
    shutil.copy(state, tmp_path / "epoch1.pt")
    resumed, resumed_hist = train_model(x, y, spec, settings, lam=0.5, seed=1, device=CPU,
                                        state_path=state, progress=False)

    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [h["epoch"] for h in resumed_hist] == [1, 2]
    for a, b in zip(full_hist, resumed_hist, strict=True):
        for k in ("loss", "cross_entropy", "jacobian_penalty", "train_accuracy"):
            assert a[k] == b[k], k
    assert load_torch(state)["epoch"] == 2

    # control: without the RNG state, resuming would not reproduce the run
    broken = load_torch(tmp_path / "epoch1.pt")
    broken["rng"]["order"] = torch.Generator().manual_seed(999).get_state()
    torch.save(broken, tmp_path / "broken.pt")
    other, _ = train_model(x, y, spec, settings, lam=0.5, seed=1, device=CPU,
                           state_path=tmp_path / "broken.pt", progress=False)
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in full.state_dict().items())


def test_resume_state_from_other_settings_is_not_silently_continued(small_data, tmp_path):
    x, y = small_data
    x, y = x[:64], y[:64]
    spec = get_spec("mnist5k")
    old = dict(SETTINGS, batch_size=32, lr=1e-3)
    new = dict(old, lr=1e-2)
    state = tmp_path / "state.pt"
    train_model(x, y, spec, dict(old, epochs=1), lam=0.0, seed=0, device=CPU,
                state_path=state, progress=False)  # interrupted run with the old lr
    try:
        resumed, _ = train_model(x, y, spec, new, lam=0.0, seed=0, device=CPU,
                                 state_path=state, progress=False)
    except ValueError:
        return  # refusing the stale state is acceptable
    fresh, _ = train_model(x, y, spec, new, lam=0.0, seed=0, device=CPU, progress=False)
    for key, value in fresh.state_dict().items():  # ... and so is restarting from scratch
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_make_optimizer():
    model = torch.nn.Linear(3, 2)
    adam = make_optimizer(model, {"optimizer": "adam", "lr": 0.01})
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 0.01
    sgd = make_optimizer(model, {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4})
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)


def test_diverging_training_stops_without_a_checkpoint(small_data, tmp_path):
    from jacreg.train import TrainingDivergedError

    x, y = small_data
    spec = get_spec("mnist5k")
    settings = dict(SETTINGS, epochs=2, optimizer="sgd", lr=1e6)  # explodes at once
    state = tmp_path / "state.pt"
    with pytest.raises(TrainingDivergedError, match="diverged in epoch 1"):
        train_model(x[:128], y[:128], spec, settings, lam=1.0, seed=0, device=CPU,
                    state_path=state, progress=False)
    assert not state.exists()
