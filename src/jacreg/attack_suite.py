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
  dataset, seed and eps; its replicate 0);
- ``warm:{lambda}``: the warm start, the strong schedule with the margin loss for
  ``warm_epochs`` epochs from that transferred UAP, on the model itself (best iterate, the start
  included, on the attack images the worst member is chosen on: never below the transfer there);
- ``worst``: the member with the highest evasion rate on the attack split (ties go to the
  earlier member in the order above). Its test-split evasion rate is the model's worst-case UAP
  evasion rate. The test split is never read while choosing it.

**Replicates.** The paper and strong members are stochastic (batch order; random starts), so
each runs ``attack.replicates`` times with the seeds of :func:`replicate_seed`; their members
are named ``paper#r`` and ``strong#r``. A row reports the paper attack's mean over its
replicates, and the worst case is chosen over every replicate of every member.

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
from jacreg.uap import replicate_uaps, sgd_uap_run

log = logging.getLogger(__name__)

MEMBER_ORDER = ("paper", "strong")  # then transfer:{lambda} in increasing lambda
REPLICATE_SEED_STRIDE = 1_000_003  # replicate r of a model of seed s runs with seed s + r * this


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of attack replicate ``replicate`` against a model of training seed ``seed``.

    Replicate 0 uses the model's seed itself (the single run of earlier versions); the others
    differ in everything the attack draws: the SGD-UAP batch order and the strong attack's
    random starts. The stride is a prime far above any training seed, so two replicates of two
    models never share a seed."""
    return int(seed) + REPLICATE_SEED_STRIDE * int(replicate)


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
    warm_epochs: int = 1  # epochs of each warm start (0: no warm-start members)

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
               progress: bool = False, starts: Sequence[torch.Tensor] | None = None,
               losses: Sequence[str] | None = None) -> StrongResult:
    """The strong SGD-UAP (module docstring) on the crafting images ``(x, y)``.

    ``restarts``, ``epochs`` and ``losses`` override the settings (the large-budget check uses
    0 restarts); ``starts`` replaces the zero and random starts (the warm start runs from a
    transferred UAP): the result is never below the best start on ``(x, y)``.
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    restarts = settings.restarts if restarts is None else restarts
    epochs = settings.epochs if epochs is None else epochs
    losses = tuple(settings.losses if losses is None else losses)
    step_max = settings.step_fraction * eps
    schedule = cosine_step(step_max, settings.final_step_fraction * step_max)
    generator = torch.Generator().manual_seed(seed + 104_729)
    run_starts: list[torch.Tensor | None]
    if starts is None:
        run_starts = [None]
        for _ in range(restarts):
            signs = torch.randint(0, 2, tuple(x.shape[1:]), generator=generator).float() * 2 - 1
            run_starts.append(signs * eps)
    else:
        run_starts = [start.reshape(x.shape[1:]).clamp(-eps, eps) for start in starts]
    starts = run_starts
    best = StrongResult(torch.zeros(x.shape[1:]), -1.0, 0, 0)
    runs = [(index, loss) for index in range(len(starts)) for loss in losses]
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


def warm_start_uap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   start: torch.Tensor, settings: StrongSettings, batch_size: int = 128,
                   beta: float = 12.0, seed: int = 0,
                   device: str | torch.device | None = None) -> StrongResult:
    """The warm-start member: the strong attack's schedule for ``settings.warm_epochs`` epochs
    with the margin loss (it keeps pulling only on inputs not yet fooled, the right loss to
    improve a UAP that already fools many), started from a UAP crafted against another model
    (``start``) and ascending on ``model`` itself. The best iterate on ``(x, y)``, the start
    included, is returned, so it never evades fewer of ``(x, y)`` than the transferred UAP."""
    return strong_uap(model, x, y, eps, settings, batch_size=batch_size, beta=beta, seed=seed,
                      device=device, epochs=settings.warm_epochs, starts=[start],
                      losses=("margin",))


def member_names(lambdas: Sequence[float], own: float, replicates: int = 1,
                 strong: bool = True, warm: bool = False) -> list[str]:
    """Members of the model at ``own``, in tie-breaking order: ``paper#r`` for each replicate r,
    ``strong#r`` likewise, then ``transfer:{lambda}`` of each other lambda (the paper UAP of its
    replicate 0), then (with ``warm``) ``warm:{lambda}``, the warm start from that transfer."""
    families = MEMBER_ORDER if strong else MEMBER_ORDER[:1]
    others = [lam for lam in sorted(lambdas) if lam != own]
    return [*(f"{family}#{r}" for family in families for r in range(replicates)),
            *(f"transfer:{lam:g}" for lam in others),
            *(f"warm:{lam:g}" for lam in (others if warm else []))]


def member_family(name: str) -> str:
    """``paper#2`` -> ``paper``; ``transfer:0.1`` -> ``transfer:0.1``."""
    return name.split("#", 1)[0]


def member_replicate(name: str) -> int:
    """The replicate of a member (``strong#2`` -> 2), -1 for members without replicates."""
    return int(name.split("#", 1)[1]) if "#" in name else -1


def family_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """Each family's rate: the mean over its replicates (``paper``, ``strong``) or the member's
    own rate (``transfer:{lambda}``), in member order."""
    grouped: dict[str, list[float]] = {}
    for name, rate in rates.items():
        grouped.setdefault(member_family(name), []).append(float(rate))
    return {family: sum(values) / len(values) for family, values in grouped.items()}


def choose_worst(attack_rates: Mapping[str, float]) -> str:
    """The member with the highest attack-split evasion; ties go to the earlier member."""
    names = list(attack_rates)
    return max(names, key=lambda name: (attack_rates[name], -names.index(name)))


def score_members(model: nn.Module, members: Mapping[str, torch.Tensor],
                  x_attack: torch.Tensor, y_attack: torch.Tensor, x_test: torch.Tensor,
                  y_test: torch.Tensor, batch_size: int = 1000) -> dict[str, Any]:
    """Each member's evasion rate on the attack split, the worst member chosen there, and then
    each member's test-split evasion and per-input outcomes.

    Returns ``{"attack_rates", "worst", "test_rates", "family_test_rates", "test_evaded"}``
    where ``test_evaded`` maps member -> bool tensor over the test inputs.
    """
    attack_rates = {name: evasion_rate(model, x_attack, y_attack, v, batch_size)
                    for name, v in members.items()}
    worst = choose_worst(attack_rates)  # decided before any test input is looked at
    test_evaded = {name: predict(model, x_test, v, batch_size=batch_size) != y_test
                   for name, v in members.items()}
    test_rates = {name: float(e.float().mean()) for name, e in test_evaded.items()}
    return {"attack_rates": attack_rates, "worst": worst, "test_rates": test_rates,
            "family_test_rates": family_rates(test_rates), "test_evaded": test_evaded}


def evaluate_suite(checkpoints: Sequence[str], uap_files: Sequence[str],
                   lambdas: Sequence[float], data_file: str, dataset: str, seed: int,
                   n_attack_images: int, batch_size: int, device: torch.device,
                   attack_settings: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The suite for one (dataset, seed): every model of every lambda against every member.

    ``checkpoints``, ``uap_files`` and ``lambdas`` are parallel. Returns ``(summary, outcomes)``:
    the JSON-ready rates, worst members, large-budget checks and the paper-UAP transfer matrix
    at the largest eps (replicate 0); and what the bootstrap resamples, per model (L), eps (E)
    and member (M, the same order for every model: :func:`member_names`): ``clean_correct``
    (L, n) and ``evaded`` (L, E, M, n) as uint8 per test input, ``attack_rates`` (L, E, M), and
    ``member_replicate`` (L, M), the replicate of each member (-1: transfer and warm start).

    With ``attack_settings`` (the config's ``attack``) and ``attack.strong.warm_epochs`` > 0,
    each transfer also gets its warm start (:func:`warm_start_uap`), crafted on the same first
    ``n_attack_images`` attack-split images the worst member is chosen on.
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
    paper = [replicate_uaps(p) for p in payloads]  # (R, E, C, H, W) each
    has_strong = all("strong_uaps" in p for p in payloads)
    strong = [replicate_uaps(p, "strong_uaps") for p in payloads] if has_strong else []
    replicates = {len(u) for u in paper + strong}
    if len(replicates) != 1:
        raise ValueError(f"the UAP files of {dataset} seed {seed} differ in their number of "
                         f"attack replicates: {sorted(replicates)} (rerun their attack jobs)")
    n_rep = replicates.pop()
    by_eps = sorted(range(len(stored)), key=stored.__getitem__)  # increasing eps from here on
    eps_list = [stored[k] for k in by_eps]
    n_l, n_e, n = len(lams), len(eps_list), len(y_test)
    settings = dict(attack_settings or {})
    strong_settings = StrongSettings.from_config(settings.get("strong"))
    warm = has_strong and bool(attack_settings) and strong_settings.warm_epochs > 0
    names = [member_names(lams, lam, n_rep, has_strong, warm) for lam in lams]
    n_m = len(names[0])
    outcomes: dict[str, Any] = {
        "dataset": dataset, "seed": int(seed), "replicates": n_rep,
        "lambdas": torch.tensor(lams, dtype=torch.float64),
        "eps": torch.tensor(eps_list, dtype=torch.float64),
        "members": names,
        "member_replicate": torch.tensor([[member_replicate(m) for m in row] for row in names],
                                         dtype=torch.int64),
        "clean_correct": torch.zeros((n_l, n), dtype=torch.uint8),
        "attack_rates": torch.zeros((n_l, n_e, n_m), dtype=torch.float64),
        "evaded": torch.zeros((n_l, n_e, n_m, n), dtype=torch.uint8)}
    models_out = []
    for t, lam in enumerate(lams):
        model = load_checkpoint(checkpoints[order[t]], device=device)
        outcomes["clean_correct"][t] = (predict(model, x_test, batch_size=batch_size)
                                        == y_test).to(torch.uint8)
        per_eps = []
        for k, (eps, stored_k) in enumerate(zip(eps_list, by_eps, strict=True)):
            members: dict[str, torch.Tensor] = {}
            warm_info = {}
            for name in names[t]:
                family, r = member_family(name), member_replicate(name)
                if family == "paper":
                    members[name] = paper[t][r, stored_k]
                elif family == "strong":
                    members[name] = strong[t][r, stored_k]
                elif family.startswith("transfer:"):
                    members[name] = paper[lams.index(float(family.split(":", 1)[1]))][0, stored_k]
                else:  # warm:{lambda}: ascend on this model from that transfer
                    source = members[f"transfer:{family.split(':', 1)[1]}"]
                    result = warm_start_uap(model, x_att, y_att, eps, source, strong_settings,
                                            batch_size=int(settings.get("batch_size", 128)),
                                            beta=float(settings.get("beta", 12.0)),
                                            seed=seed, device=device)
                    members[name] = result.uap
                    warm_info[name] = {"epoch": result.epoch,
                                       "crafting_evasion_rate": result.crafting_evasion_rate}
            scored = score_members(model, members, x_att, y_att, x_test, y_test, batch_size)
            evaded = scored.pop("test_evaded")
            for m, name in enumerate(names[t]):
                outcomes["evaded"][t, k, m] = evaded[name].to(torch.uint8)
                outcomes["attack_rates"][t, k, m] = scored["attack_rates"][name]
            per_eps.append({"eps": eps, **scored, **({"warm": warm_info} if warm_info else {})})
            log.info("lambda=%g eps=%g worst=%s test: %s", lam, eps, scored["worst"],
                     " ".join(f"{m}={r:.4f}" for m, r in scored["family_test_rates"].items()))
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
    top = len(eps_list) - 1  # the transfer matrix of the paper UAPs (replicate 0), largest eps
    matrix = [[models_out[b]["per_eps"][top]["test_rates"]["paper#0" if a == b
                                                            else f"transfer:{lams[a]:g}"]
               for b in range(n_l)] for a in range(n_l)]
    summary = {"dataset": dataset, "seed": int(seed), "eps": eps_list[top], "eps_list": eps_list,
               "lambdas": lams, "replicates": n_rep, "warm_start": warm, "matrix": matrix,
               "n_test": n,
               "n_attack": len(y_att), "models": models_out,
               "checkpoints": [str(checkpoints[i]) for i in order],
               "uaps": [str(uap_files[i]) for i in order]}
    return summary, outcomes
