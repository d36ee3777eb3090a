"""UAP transfer between regularization strengths.

For one dataset and seed, the UAP crafted against the lambda_a model (at the largest eps) is
applied to the lambda_b model: entry [a][b] of the matrix is the evasion rate of model b under
the perturbation of model a, over the whole test split. The diagonal repeats each model's own
UAP evasion rate; the off-diagonal entries show whether a perturbation found on an
unregularized model still fools a regularized one (and the other way round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jacreg.data import load_prepared, to_float
from jacreg.evaluate import load_uaps
from jacreg.metrics import predict, uap_evasion_rate
from jacreg.models import load_checkpoint

log = logging.getLogger(__name__)


def transfer_matrix(models: Sequence[nn.Module], perturbations: Sequence[torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> list[list[float]]:
    """``m[a][b]`` = evasion rate of ``models[b]`` on clip(x + perturbations[a], 0, 1)."""
    return [[uap_evasion_rate(predict(model, x, v, batch_size=batch_size), y) for model in models]
            for v in perturbations]


def largest_eps_uap(uap_file: str | Path) -> tuple[float, torch.Tensor]:
    """(eps, perturbation) of the largest budget stored in a UAP file."""
    eps_list, uaps = load_uaps(uap_file)
    k = max(range(len(eps_list)), key=lambda i: eps_list[i])
    return eps_list[k], uaps[k]


def compute_transfer(checkpoints: Sequence[str | Path], uap_files: Sequence[str | Path],
                     lambdas: Sequence[float], data_file: str | Path, dataset: str, seed: int,
                     batch_size: int, device: torch.device) -> dict[str, Any]:
    """The transfer matrix of one (dataset, seed); ``checkpoints``, ``uap_files`` and
    ``lambdas`` are parallel lists (one entry per lambda)."""
    if not len(checkpoints) == len(uap_files) == len(lambdas):
        raise ValueError("checkpoints, uap_files and lambdas must have the same length, got "
                         f"{len(checkpoints)}, {len(uap_files)}, {len(lambdas)}")
    order = sorted(range(len(lambdas)), key=lambda i: float(lambdas[i]))
    tensors = load_prepared(data_file)
    x, y = to_float(tensors["x_test"]), tensors["y_test"]
    models = [load_checkpoint(checkpoints[i], device=device) for i in order]
    picked = [largest_eps_uap(uap_files[i]) for i in order]
    if not all(math.isclose(e, picked[0][0], rel_tol=1e-9) for e, _ in picked):
        raise ValueError(f"UAP files disagree on the largest eps: {[e for e, _ in picked]}")
    eps = picked[0][0]
    matrix = transfer_matrix(models, [v for _, v in picked], x, y, batch_size=batch_size)
    lams = [float(lambdas[i]) for i in order]
    for lam, line in zip(lams, matrix, strict=True):
        log.info("uap of lambda=%g eps=%g -> evasion %s", lam, eps,
                 " ".join(f"{r:.4f}" for r in line))
    return {"dataset": dataset, "seed": int(seed), "eps": float(eps), "lambdas": lams,
            "matrix": matrix, "n_test": len(y),
            "checkpoints": [str(checkpoints[i]) for i in order],
            "uaps": [str(uap_files[i]) for i in order]}
