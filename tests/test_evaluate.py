"""Tests for :mod:`jacreg.evaluate` with attack replicates: a row's UAP rates are the means over
the replicates, computed here independently, and a file from before replicates reads as one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jacreg.data import to_float
from jacreg.evaluate import evaluate_model
from jacreg.io import save_torch
from jacreg.metrics import predict
from jacreg.models import build_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = {"n_inputs": 20, "n_pairs": 10, "pairs_per_class_pair": 1, "batch_size": 500,
            "pgd_inputs": 0}


def _model(path: Path) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model("cnn_small")
    save_checkpoint(model, path, "cnn_small", {"in_channels": 1, "num_classes": 10,
                                               "image_size": 28})
    return model.eval()


def test_rows_are_means_over_the_replicates(tmp_path: Path, mnist5k) -> None:
    data_path, tensors = mnist5k
    x_test, y_test = to_float(tensors["x_test"]), tensors["y_test"]
    model = _model(tmp_path / "model.pt")
    eps = [0.1, 0.3]
    gen = torch.Generator().manual_seed(0)
    uaps = torch.stack([torch.stack([torch.sign(torch.randn(1, 28, 28, generator=gen)) * e
                                     for e in eps]) for _ in range(3)])  # (R=3, E=2, 1, 28, 28)
    save_torch({"eps": torch.tensor(eps, dtype=torch.float64), "uaps": uaps, "replicates": 3},
               tmp_path / "uaps.pt")
    result = evaluate_model(tmp_path / "model.pt", tmp_path / "uaps.pt", data_path, "mnist5k",
                            0.0, 0, SETTINGS, torch.device("cpu"))
    clean = predict(model, x_test)
    for k, row in enumerate(result["rows"]):
        assert row["eps"] == eps[k] and row["uap_replicates"] == 3
        preds = [predict(model, x_test, uaps[r, k]) for r in range(3)]
        evasion = [float((p != y_test).float().mean()) for p in preds]
        fooling = [float((p != clean).float().mean()) for p in preds]
        assert row["uap_evasion_rate_replicates"] == pytest.approx(evasion, abs=1e-12)
        assert row["uap_evasion_rate"] == pytest.approx(sum(evasion) / 3, abs=1e-12)
        assert row["uap_fooling_rate_replicates"] == pytest.approx(fooling, abs=1e-12)
        assert row["uap_fooling_rate"] == pytest.approx(sum(fooling) / 3, abs=1e-12)
        assert len(set(evasion)) > 1  # the replicates really differ
        norms = [float(uaps[r, k].double().norm()) for r in range(3)]
        assert row["uap_l2_norm"] == pytest.approx(sum(norms) / 3)
        assert row["bound_violations"] == 0
        assert row["linearized_logit_change"] <= row["spectral_bound"] <= row["frobenius_bound"]

    # the format before replicates: (E, C, H, W), one run
    save_torch({"eps": torch.tensor(eps, dtype=torch.float64), "uaps": uaps[1]},
               tmp_path / "old.pt")
    old = evaluate_model(tmp_path / "model.pt", tmp_path / "old.pt", data_path, "mnist5k", 0.0,
                         0, SETTINGS, torch.device("cpu"))
    for k, row in enumerate(old["rows"]):
        assert row["uap_replicates"] == 1
        assert row["uap_evasion_rate"] == result["rows"][k]["uap_evasion_rate_replicates"][1]
