"""Tests for :mod:`jacreg.transfer`: hand-made models and perturbations, then real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jacreg.data import to_float
from jacreg.io import save_torch
from jacreg.metrics import predict, uap_evasion_rate
from jacreg.models import build_model, save_checkpoint
from jacreg.transfer import compute_transfer, transfer_matrix

# three "pixels" that are also the logits of model A; model B adds a bias towards class 2
X = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.8], [0.5, 0.4, 0.0]])
Y = torch.tensor([0, 1, 2, 0])


def _linear(bias: list[float]) -> nn.Linear:
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.copy_(torch.tensor(bias))
    return model


def test_transfer_matrix_on_hand_made_models() -> None:
    model_a, model_b = _linear([0.0, 0.0, 0.0]), _linear([0.0, 0.0, 0.45])
    assert predict(model_a, X).tolist() == Y.tolist() == predict(model_b, X).tolist()
    v1 = torch.tensor([0.0, 0.25, 0.0])  # fools input 3 on both: [.5, .65, 0] / [.5, .65, .45]
    v2 = torch.tensor([0.0, 0.0, 0.35])  # A: none fooled; B: inputs 0, 1 and 3 go to class 2
    matrix = transfer_matrix([model_a, model_b], [v1, v2], X, Y, batch_size=3)
    assert matrix == [[pytest.approx(0.25), pytest.approx(0.25)],
                      [pytest.approx(0.0), pytest.approx(0.75)]]


def _checkpoint(path: Path, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn_small")
    save_checkpoint(model, path, "cnn_small",
                    {"in_channels": 1, "num_classes": 10, "image_size": 28})
    return model.eval()


def _uaps(path: Path, eps: list[float], lam: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    uaps = torch.stack([(torch.rand(1, 28, 28, generator=gen) * 2 - 1) * e for e in eps])
    save_torch({"eps": torch.tensor(eps, dtype=torch.float64), "uaps": uaps,
                "dataset": "mnist5k", "lambda": lam, "seed": 0}, path)
    return uaps


def test_compute_transfer_from_files(tmp_path: Path, mnist5k, one_thread) -> None:
    data_path, tensors = mnist5k
    x, y = to_float(tensors["x_test"]), tensors["y_test"]
    lambdas = [1.0, 0.0]  # given out of order: the result is sorted by lambda
    models, uaps, ckpts, files = [], [], [], []
    for i, lam in enumerate(lambdas):
        ckpts.append(tmp_path / f"lam{lam:g}.pt")
        files.append(tmp_path / f"uap{lam:g}.pt")
        models.append(_checkpoint(ckpts[-1], seed=i))
        uaps.append(_uaps(files[-1], [0.3, 0.1], lam, seed=i))  # largest eps first
    result = compute_transfer(ckpts, files, lambdas, data_path, "mnist5k", 0, 500,
                              torch.device("cpu"))
    assert result["lambdas"] == [0.0, 1.0] and result["eps"] == 0.3
    assert result["n_test"] == len(y) and result["dataset"] == "mnist5k"
    assert result["checkpoints"] == [str(ckpts[1]), str(ckpts[0])]
    # entry [a][b]: the eps = 0.3 UAP of lambda a on the model of lambda b
    order = [1, 0]
    for a in range(2):
        for b in range(2):
            expected = uap_evasion_rate(predict(models[order[b]], x, uaps[order[a]][0]), y)
            assert result["matrix"][a][b] == expected

    _uaps(files[0], [0.2, 0.1], 1.0, seed=0)
    with pytest.raises(ValueError, match="largest eps"):
        compute_transfer(ckpts, files, lambdas, data_path, "mnist5k", 0, 500,
                         torch.device("cpu"))
    with pytest.raises(ValueError, match="same length"):
        compute_transfer(ckpts, files[:1], lambdas, data_path, "mnist5k", 0, 500,
                         torch.device("cpu"))
