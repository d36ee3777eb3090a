"""Per-model evaluation: rates over the test split and Jacobian analysis over the analysis set.

For one trained model and its UAPs (one per eps) this computes, in one pass of each kind:

- over the whole test split: clean accuracy, UAP evasion and fooling rates per eps, and the
  random +-eps baseline;
- over the analysis set X (the first ``analysis.n_inputs`` test inputs), from the exact
  per-sample Jacobians: mean ||J(x)||_F, mean sigma_i, ||J_X||_2 and ||J_X||_F, and, per eps,
  the chain (DESIGN §2)

      ||f(X+v) - f(X)||  ~  ||J_X v||  <=  ||J_X||_2 ||v||_2  <=  ||J_X||_F ||v||_2,

  plus the cosine between the UAP and the top right singular vector of J_X;
- with R attack replicates (``attack.replicates``), every UAP quantity of a row is the mean over
  the R replicates of the paper attack and the per-replicate evasion and fooling rates are
  kept; ``bound_violations`` counts the replicates whose chain above is violated;
- the shared-perturbation metric s_ij over ``analysis.n_pairs`` random pairs, with the
  singular-vector cosine, and its K x K class-pair matrix;
- the per-input contrast: the PGD evasion rate per eps (L-infinity, ``analysis.pgd_steps``
  steps of 2.5 eps / steps from a seeded random start; :mod:`jacreg.pgd`) over the first
  ``analysis.pgd_inputs`` test inputs, beside the UAP evasion rate on the same inputs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from jacreg.data import load_prepared_spec, to_float
from jacreg.io import load_torch
from jacreg.jacobian import (
    class_pair_matrix,
    jacobian_statistics,
    linearized_logit_change,
    pairwise_shared_metric,
    per_sample_jacobians,
    sample_pairs,
)
from jacreg.metrics import (
    accuracy,
    predict,
    random_sign_perturbation,
    uap_evasion_rate,
    uap_fooling_rate,
)
from jacreg.models import load_checkpoint
from jacreg.pgd import pgd_attack
from jacreg.uap import replicate_uaps

log = logging.getLogger(__name__)

PGD_INPUTS_DEFAULT = 1000
PGD_STEPS_DEFAULT = 20
PGD_SEED_OFFSET = 9_000_011  # the random start's seed: model seed + this offset


@torch.inference_mode()
def _stacked_logit_change(model: torch.nn.Module, x: torch.Tensor, v: torch.Tensor,
                          batch_size: int) -> float:
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        delta = model((xb + v.to(device)).clamp(0.0, 1.0)) - model(xb)
        total += float(delta.double().pow(2).sum())
    return math.sqrt(total)


def load_uaps(path: str | Path) -> tuple[list[float], torch.Tensor]:
    """(eps list, tensor R x E x C x H x W of the paper attack's R replicates) from a UAP file,
    weights-only."""
    payload = load_torch(path)
    return [float(e) for e in payload["eps"]], replicate_uaps(payload)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def evaluate_model(checkpoint: str | Path, uap_file: str | Path, data_file: str | Path,
                   dataset: str, lam: float, seed: int, settings: dict[str, Any],
                   device: torch.device) -> dict[str, Any]:
    """All metrics of one model; returns a dict with ``rows`` (one per eps) and the class matrix."""
    model = load_checkpoint(checkpoint, device=device)
    tensors, spec = load_prepared_spec(data_file, dataset)  # custom: recorded in the file
    x_test, y_test = to_float(tensors["x_test"]), tensors["y_test"]
    eps_list, uaps = load_uaps(uap_file)
    batch = settings["batch_size"]

    clean_pred = predict(model, x_test, batch_size=batch)
    clean_acc = accuracy(clean_pred, y_test)
    log.info("clean_accuracy=%.4f n_test=%d", clean_acc, len(y_test))

    x_an, y_an = x_test[:settings["n_inputs"]], y_test[:settings["n_inputs"]]
    jac = per_sample_jacobians(model, x_an, batch_size=batch, progress=True).cpu()
    stats = jacobian_statistics(jac)
    generator = torch.Generator().manual_seed(seed)
    pairs = sample_pairs(len(x_an), settings["n_pairs"], generator)
    scores, cosines = pairwise_shared_metric(jac, stats, pairs)
    matrix = class_pair_matrix(jac, stats, y_an, spec.num_classes,
                               settings["pairs_per_class_pair"], generator)
    log.info("jacobian_frobenius=%.4f stacked_spectral=%.4f shared_metric=%.4f",
             float(stats.frobenius.mean()), stats.stacked_spectral, float(scores.mean()))

    n_pgd = min(int(settings.get("pgd_inputs", PGD_INPUTS_DEFAULT)), len(x_test))
    pgd_steps = int(settings.get("pgd_steps", PGD_STEPS_DEFAULT))
    x_pgd, y_pgd = x_test[:n_pgd], y_test[:n_pgd]

    rows = []
    noise_gen = torch.Generator().manual_seed(seed + 7_000_001)
    for k, eps in enumerate(eps_list):
        replicas = uaps[:, k]  # the R replicates of the paper attack at this eps
        adv_preds = [predict(model, x_test, v, batch_size=batch) for v in replicas]
        noise = random_sign_perturbation(replicas[0].shape, eps, noise_gen)
        noise_pred = predict(model, x_test, noise, batch_size=batch)
        v_norms = [float(v.double().norm()) for v in replicas]
        top_cos = [float((v.reshape(-1).double() @ stats.stacked_top_vector.double()).abs()
                         / max(norm, 1e-30)) for v, norm in zip(replicas, v_norms, strict=True)]
        linearized = [linearized_logit_change(jac, v) for v in replicas]
        spectral = [stats.stacked_spectral * norm for norm in v_norms]
        frobenius = [stats.stacked_frobenius * norm for norm in v_norms]
        violations = sum(1 for lin, sb, fb in zip(linearized, spectral, frobenius, strict=True)
                         if lin > sb * (1 + 1e-5) + 1e-9 or sb > fb * (1 + 1e-5) + 1e-9)
        evasion = [uap_evasion_rate(p, y_test) for p in adv_preds]
        fooling = [uap_fooling_rate(clean_pred, p) for p in adv_preds]
        pgd_rate = None
        if n_pgd > 0:
            started = time.perf_counter()
            x_adv = pgd_attack(model, x_pgd, y_pgd, eps, steps=pgd_steps,
                               seed=seed + PGD_SEED_OFFSET, batch_size=batch)
            pgd_rate = uap_evasion_rate(predict(model, x_adv, batch_size=batch), y_pgd)
            log.info("eps=%g pgd_evasion=%.4f n=%d steps=%d linf=%.4f seconds=%.2f", eps,
                     pgd_rate, n_pgd, pgd_steps, float((x_adv - x_pgd).abs().max()),
                     time.perf_counter() - started)
        # UAP quantities are means over the R replicates of the paper attack (the expected
        # outcome of the authors' procedure); the per-replicate rates are kept beside them
        row = {
            "dataset": dataset, "lambda": float(lam), "seed": int(seed), "eps": float(eps),
            "clean_accuracy": clean_acc, "clean_error": 1.0 - clean_acc,
            "uap_evasion_rate": _mean(evasion),
            "uap_fooling_rate": _mean(fooling),
            "uap_replicates": len(replicas),
            "uap_evasion_rate_replicates": evasion,
            "uap_fooling_rate_replicates": fooling,
            "random_evasion_rate": uap_evasion_rate(noise_pred, y_test),
            "random_fooling_rate": uap_fooling_rate(clean_pred, noise_pred),
            "jacobian_frobenius": float(stats.frobenius.mean()),
            "jacobian_spectral_mean": float(stats.spectral.mean()),
            "stacked_jacobian_spectral": stats.stacked_spectral,
            "stacked_jacobian_frobenius": stats.stacked_frobenius,
            "shared_metric_mean": float(scores.mean()),
            "shared_cosine_mean": float(cosines.mean()),
            "uap_l2_norm": _mean(v_norms),
            "uap_top_singular_cosine": _mean(top_cos),
            "linearized_logit_change": _mean(linearized),
            "spectral_bound": _mean(spectral),
            "frobenius_bound": _mean(frobenius),
            "bound_violations": violations,
            "actual_logit_change": _mean([_stacked_logit_change(model, x_an, v, batch)
                                          for v in replicas]),
            "pgd_evasion_rate": pgd_rate,
            "uap_evasion_rate_pgd_inputs": (_mean([uap_evasion_rate(p[:n_pgd], y_pgd)
                                                   for p in adv_preds])
                                            if n_pgd > 0 else None),
            "pgd_n_inputs": n_pgd, "pgd_steps": pgd_steps,
            "pgd_step_size": 2.5 * float(eps) / max(pgd_steps, 1),
            "train_threads": int(model.checkpoint_meta.get("threads", 0)),
            "eval_threads": torch.get_num_threads(),
            "n_test": len(y_test), "n_analysis": len(x_an), "n_pairs": len(pairs),
            "checkpoint": str(checkpoint), "uap": str(uap_file),
        }
        log.info("eps=%g uap_evasion=%.4f fooling=%.4f random_evasion=%.4f", eps,
                 row["uap_evasion_rate"], row["uap_fooling_rate"], row["random_evasion_rate"])
        rows.append(row)
    x_train, x_attack = tensors["x_train"], tensors["x_attack"]
    return {
        "dataset": dataset, "lambda": float(lam), "seed": int(seed),
        "class_names": list(spec.classes),
        # the splits as prepared, for the report: sizes, and where the attack split came from
        "splits": {"train": len(x_train), "attack": len(x_attack), "test": len(y_test),
                   "attack_split": "held_out" if spec.attack_holdout > 0 else
                   "train" if torch.equal(x_attack, x_train) else "own"},
        "class_pair_matrix": [[None if math.isnan(c) else float(c) for c in r]
                              for r in matrix.tolist()],
        "shared_metric_mean": float(scores.mean()),
        "rows": rows,
    }
