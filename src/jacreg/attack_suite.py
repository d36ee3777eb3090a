"""The UAP attack suite: the paper's attack, a stronger one, transfer, and the worst case.

A robustness number is only as good as the attack behind it (Carlini et al., "On Evaluating
Adversarial Robustness", arXiv:1902.06705, 2019; Athalye, Carlini & Wagner, ICML 2018). For
every model and eps the suite has these members, each crafted or chosen on the attack split and
scored on the test split:

- ``paper``: SGD-UAP exactly as the authors (Shafahi et al., AAAI 2020; :func:`jacreg.uap.sgd_uap`):
  zero start, constant sign step 0.8 eps, last iterate;
- ``strong``: :func:`strong_uap`: the zero start plus ``restarts`` random starts v0 = eps * s
  (s i.i.d. uniform signs), each run once per loss in ``losses`` (the paper's cross-entropy
  clamped at beta, and the margin loss max_{j != y} z_j - z_y clamped at 0, which keeps pulling
  only on inputs not yet misclassified: on strongly regularized models, whose logits are small
  and flat, it finds far stronger UAPs than the cross-entropy), each run for ``epochs`` epochs
  with a cosine-decaying sign step

      step(t) = step_min + (step_max - step_min) * (1 + cos(pi t)) / 2,   t in [0, 1),

  step_max = ``step_fraction`` * eps, step_min = ``final_step_fraction`` * step_max; after every
  epoch the iterate's evasion rate on the crafting images is measured, and the best iterate of
  the best start is returned;
- ``transfer:{lambda}``: the paper-attack UAP crafted against the model of another lambda (same
  dataset, seed and eps);
- ``worst``: the member with the highest evasion rate on the attack split (ties go to the
  earlier member in the order above). Its test-split evasion rate is the model's worst-case UAP
  evasion rate. The test split is never read while choosing it.

A large-budget check crafts one more UAP at ``check_eps`` (1.0 by default) with the strong
attack's zero-start run only (a random start alone already reaches about 0.9 evasion at eps = 1,
since clip(x +- 1) erases the input, and would hide a gradient that is zero).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from jacreg.metrics import predict
from jacreg.uap import sgd_uap_run

log = logging.getLogger(__name__)

MEMBER_ORDER = ("paper", "strong")  # then transfer:{lambda} in increasing lambda


@dataclass(frozen=True)
class StrongSettings:
    """``attack.strong`` of the config."""

    restarts: int = 2
    epochs: int = 10
    losses: tuple[str, ...] = ("ce", "margin")
    step_fraction: float = 0.8
    final_step_fraction: float = 0.05
    n_images: int | None = None  # crafting images (the first n of the attack images); None: all
    check_eps: float = 1.0
    check_epochs: int = 2

    @classmethod
    def from_config(cls, settings: Mapping[str, Any] | None) -> StrongSettings:
        values = {k: v for k, v in (settings or {}).items() if k in cls.__dataclass_fields__}
        if "losses" in values:
            values["losses"] = tuple(values["losses"])
        return cls(**values)


@dataclass
class StrongResult:
    """The chosen UAP and how it was found."""

    uap: torch.Tensor
    crafting_evasion_rate: float
    start: int  # 0: the zero start, r >= 1: random start r
    epoch: int  # 0: the start itself, e >= 1: after epoch e
    loss: str = "ce"
    per_start: list[float] = field(default_factory=list)  # best evasion of each (start, loss)


def cosine_step(step_max: float, step_min: float):
    """``t -> step_min + (step_max - step_min) (1 + cos(pi t)) / 2``."""
    return lambda t: step_min + (step_max - step_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def evasion_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 v: torch.Tensor | None, batch_size: int = 1000) -> float:
    """Fraction of ``(x, y)`` misclassified on clip(x + v, 0, 1)."""
    return float((predict(model, x, v, batch_size=batch_size) != y).float().mean())


def strong_uap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               settings: StrongSettings, batch_size: int = 128, beta: float = 12.0,
               seed: int = 0, device: str | torch.device | None = None,
               restarts: int | None = None, epochs: int | None = None,
               progress: bool = False) -> StrongResult:
    """The strong SGD-UAP (module docstring) on the crafting images ``(x, y)``.

    ``restarts`` and ``epochs`` override the settings (the large-budget check uses 0 restarts).
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    restarts = settings.restarts if restarts is None else restarts
    epochs = settings.epochs if epochs is None else epochs
    step_max = settings.step_fraction * eps
    schedule = cosine_step(step_max, settings.final_step_fraction * step_max)
    generator = torch.Generator().manual_seed(seed + 104_729)
    starts: list[torch.Tensor | None] = [None]
    for _ in range(restarts):
        signs = torch.randint(0, 2, tuple(x.shape[1:]), generator=generator).float() * 2 - 1
        starts.append(signs * eps)
    best = StrongResult(torch.zeros(x.shape[1:]), -1.0, 0, 0)
    runs = [(index, loss) for index in range(len(starts)) for loss in settings.losses]
    for run, (index, loss) in enumerate(runs):
        start = starts[index]
        initial = torch.zeros(x.shape[1:]) if start is None else start
        record = [evasion_rate(model, x, y, initial), initial.clone(), 0]

        def keep_best(epoch: int, v: torch.Tensor, record: list = record) -> None:
            rate = evasion_rate(model, x, y, v[0])
            if rate > record[0]:
                record[:] = [rate, v[0].detach().cpu().clone(), epoch + 1]

        sgd_uap_run(model, x, y, eps, start=start, epochs=epochs, batch_size=batch_size,
                    beta=beta, step_at=schedule, seed=seed + 7919 * run, device=device,
                    progress=progress, on_epoch=keep_best, loss=loss)
        best.per_start.append(record[0])
        if record[0] > best.crafting_evasion_rate:
            best.uap, best.crafting_evasion_rate = record[1], record[0]
            best.start, best.epoch, best.loss = index, record[2], loss
    return best


def member_names(lambdas: Sequence[float], own: float) -> list[str]:
    """Members of the model at ``own``: paper, strong, then transfer:{lambda} of the others."""
    return [*MEMBER_ORDER, *(f"transfer:{lam:g}" for lam in sorted(lambdas) if lam != own)]


def choose_worst(attack_rates: Mapping[str, float]) -> str:
    """The member with the highest attack-split evasion; ties go to the earlier member."""
    names = list(attack_rates)
    return max(names, key=lambda name: (attack_rates[name], -names.index(name)))


def score_members(model: nn.Module, members: Mapping[str, torch.Tensor],
                  x_attack: torch.Tensor, y_attack: torch.Tensor, x_test: torch.Tensor,
                  y_test: torch.Tensor, batch_size: int = 1000) -> dict[str, Any]:
    """Each member's evasion rate on the attack split, the worst member chosen there, and then
    each member's test-split evasion and the worst member's per-input outcomes.

    Returns ``{"attack_rates", "worst", "test_rates", "test_evaded"}`` where ``test_evaded``
    maps member -> bool tensor over the test inputs.
    """
    attack_rates = {name: evasion_rate(model, x_attack, y_attack, v, batch_size)
                    for name, v in members.items()}
    worst = choose_worst(attack_rates)  # decided before any test input is looked at
    test_evaded = {name: predict(model, x_test, v, batch_size=batch_size) != y_test
                   for name, v in members.items()}
    return {"attack_rates": attack_rates, "worst": worst,
            "test_rates": {name: float(e.float().mean()) for name, e in test_evaded.items()},
            "test_evaded": test_evaded}


def evaluate_suite(checkpoints: Sequence[str], uap_files: Sequence[str],
                   lambdas: Sequence[float], data_file: str, dataset: str, seed: int,
                   n_attack_images: int, batch_size: int,
                   device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """The suite for one (dataset, seed): every model of every lambda against every member.

    ``checkpoints``, ``uap_files`` and ``lambdas`` are parallel. Returns ``(summary, outcomes)``:
    the JSON-ready rates, worst members, large-budget checks and the paper-UAP transfer matrix
    at the largest eps; and the per-input test outcomes (uint8 tensors) that the bootstrap
    resamples: ``clean_correct`` (L, n) and ``{paper,strong,worst}_evaded`` (L, E, n).
    """
    from jacreg.data import load_prepared, to_float
    from jacreg.io import load_torch
    from jacreg.models import load_checkpoint

    if not len(checkpoints) == len(uap_files) == len(lambdas):
        raise ValueError("checkpoints, uap_files and lambdas must have the same length, got "
                         f"{len(checkpoints)}, {len(uap_files)}, {len(lambdas)}")
    order = sorted(range(len(lambdas)), key=lambda i: float(lambdas[i]))
    lams = [float(lambdas[i]) for i in order]
    tensors = load_prepared(data_file)
    x_test, y_test = to_float(tensors["x_test"]), tensors["y_test"]
    x_att = to_float(tensors["x_attack"][:n_attack_images])
    y_att = tensors["y_attack"][:n_attack_images]
    payloads = [load_torch(uap_files[i]) for i in order]
    stored = [float(e) for e in payloads[0]["eps"]]
    for i, p in zip(order, payloads, strict=True):
        if [float(e) for e in p["eps"]] != stored:
            raise ValueError(f"{uap_files[i]}: eps {p['eps'].tolist()} differ from {stored}")
    by_eps = sorted(range(len(stored)), key=stored.__getitem__)  # increasing eps from here on
    eps_list = [stored[k] for k in by_eps]
    has_strong = all("strong_uaps" in p for p in payloads)
    n_l, n_e, n = len(lams), len(eps_list), len(y_test)
    outcomes: dict[str, Any] = {
                "dataset": dataset, "seed": int(seed),
                "lambdas": torch.tensor(lams, dtype=torch.float64),
                "eps": torch.tensor(eps_list, dtype=torch.float64),
                "clean_correct": torch.zeros((n_l, n), dtype=torch.uint8),
                **{f"{kind}_evaded": torch.zeros((n_l, n_e, n), dtype=torch.uint8)
                   for kind in ("paper", "strong", "worst")}}
    models_out = []
    for t, lam in enumerate(lams):
        model = load_checkpoint(checkpoints[order[t]], device=device)
        outcomes["clean_correct"][t] = (predict(model, x_test, batch_size=batch_size)
                                        == y_test).to(torch.uint8)
        per_eps = []
        for k, (eps, stored_k) in enumerate(zip(eps_list, by_eps, strict=True)):
            members = {"paper": payloads[t]["uaps"][stored_k]}
            if has_strong:
                members["strong"] = payloads[t]["strong_uaps"][stored_k]
            for a, other in enumerate(lams):
                if a != t:
                    members[f"transfer:{other:g}"] = payloads[a]["uaps"][stored_k]
            scored = score_members(model, members, x_att, y_att, x_test, y_test, batch_size)
            evaded = scored.pop("test_evaded")
            outcomes["paper_evaded"][t, k] = evaded["paper"].to(torch.uint8)
            outcomes["strong_evaded"][t, k] = evaded.get("strong", evaded["paper"]).to(torch.uint8)
            outcomes["worst_evaded"][t, k] = evaded[scored["worst"]].to(torch.uint8)
            per_eps.append({"eps": eps, **scored})
            log.info("lambda=%g eps=%g worst=%s test: %s", lam, eps, scored["worst"],
                     " ".join(f"{m}={r:.4f}" for m, r in scored["test_rates"].items()))
        check = None
        if has_strong:
            v = payloads[t]["check_uap"]
            check = {"eps": float(payloads[t]["check_eps"]),
                     "crafting_evasion_rate": float(payloads[t]["check_crafting_evasion_rate"]),
                     "test_evasion_rate": evasion_rate(model, x_test, y_test, v, batch_size)}
        models_out.append({"lambda": lam, "per_eps": per_eps, "large_budget_check": check,
                           "strong_info": payloads[t].get("strong_info"),
                           "checkpoint": str(checkpoints[order[t]]),
                           "uap": str(uap_files[order[t]])})
    top = len(eps_list) - 1  # the transfer matrix of the paper UAPs at the largest eps
    matrix = [[models_out[b]["per_eps"][top]["test_rates"]["paper" if a == b
                                                            else f"transfer:{lams[a]:g}"]
               for b in range(n_l)] for a in range(n_l)]
    summary = {"dataset": dataset, "seed": int(seed), "eps": eps_list[top], "eps_list": eps_list,
               "lambdas": lams, "matrix": matrix, "n_test": n, "n_attack": len(y_att),
               "models": models_out,
               "checkpoints": [str(checkpoints[i]) for i in order],
               "uaps": [str(uap_files[i]) for i in order]}
    return summary, outcomes
