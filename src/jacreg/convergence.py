"""Attack convergence: would a much longer attack find stronger UAPs than the shipped worst case?

Carlini et al., "On Evaluating Adversarial Robustness" (arXiv:1902.06705, 2019, §4.3 and the
checklist): an attack's answer must not change when it is given more iterations and more random
restarts. For one model and eps, the *long run* is the suite's strong attack
(:func:`jacreg.attack_suite.strong_uap`) with ``factor`` times the random restarts (at least
``factor``) and ``factor`` times the epochs, on the same crafting images, with its own seed. The
**gap** is

    gap = evasion_test(long run) - evasion_test(shipped worst case),

positive when the long run evades more test inputs than the worst case the run reports. The
workflow runs it per model when ``analysis.convergence.enabled`` is true
(``configs/convergence.yaml``); metrics.json and the report then carry every gap and the largest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from jacreg.attack_suite import StrongSettings, evasion_rate, replicate_seed, strong_uap

log = logging.getLogger(__name__)

LONG_RUN_REPLICATE = 1_000  # the long run's seed: replicate_seed(model seed, this)


def long_settings(settings: StrongSettings, factor: int) -> StrongSettings:
    """The strong settings with ``factor`` times the restarts (at least ``factor``) and
    epochs."""
    return dataclasses.replace(settings, restarts=max(settings.restarts, 1) * factor,
                               epochs=settings.epochs * factor)


def model_convergence(model: torch.nn.Module, x_craft: torch.Tensor, y_craft: torch.Tensor,
                      x_test: torch.Tensor, y_test: torch.Tensor,
                      shipped: Sequence[Mapping[str, Any]], settings: StrongSettings,
                      factor: int, batch_size: int, beta: float, seed: int,
                      device: torch.device | None = None) -> list[dict[str, Any]]:
    """Per eps of ``shipped`` (the suite's records of this model: ``eps``, ``worst``,
    ``test_rates``), the long run's test evasion and its gap to the shipped worst case."""
    longer = long_settings(settings, factor)
    out = []
    for record in sorted(shipped, key=lambda r: float(r["eps"])):
        eps = float(record["eps"])
        started = time.perf_counter()
        result = strong_uap(model, x_craft, y_craft, eps, longer, batch_size=batch_size,
                            beta=beta, seed=replicate_seed(seed, LONG_RUN_REPLICATE),
                            device=device)
        long_test = evasion_rate(model, x_test, y_test, result.uap)
        worst = record["worst"]
        shipped_test = float(record["test_rates"][worst])
        out.append({"eps": eps, "shipped_worst_member": worst,
                    "shipped_worst_evasion_rate": shipped_test,
                    "long_run_evasion_rate": long_test,
                    "long_run_crafting_evasion_rate": result.crafting_evasion_rate,
                    "long_run_start": result.start, "long_run_loss": result.loss,
                    "gap": long_test - shipped_test,
                    "seconds": time.perf_counter() - started})
        log.info("eps=%g shipped worst=%s %.4f long run %.4f gap %+.4f (%.0f s)", eps, worst,
                 shipped_test, long_test, long_test - shipped_test, out[-1]["seconds"])
    return out


def run_convergence(checkpoint: str, suite_file: str, data_file: str, lam: float,
                    attack_settings: Mapping[str, Any], factor: int,
                    device: torch.device) -> dict[str, Any]:
    """The long run of one model (its checkpoint and its seed's suite summary)."""
    from jacreg.data import load_prepared, to_float
    from jacreg.io import read_json
    from jacreg.models import load_checkpoint

    suite = read_json(suite_file)
    record = next((m for m in suite["models"] if float(m["lambda"]) == float(lam)), None)
    if record is None:
        raise ValueError(f"{suite_file}: no model with lambda={lam:g}")
    settings = StrongSettings.from_config(attack_settings.get("strong"))
    tensors = load_prepared(data_file)
    n_attack = int(attack_settings["n_images"])
    n_craft = min(settings.n_images or n_attack, n_attack)
    x_craft = to_float(tensors["x_attack"][:n_craft]).to(device)
    y_craft = tensors["y_attack"][:n_craft].to(device)
    model = load_checkpoint(checkpoint, device=device)
    per_eps = model_convergence(model, x_craft, y_craft, to_float(tensors["x_test"]),
                                tensors["y_test"], record["per_eps"], settings, factor,
                                int(attack_settings.get("batch_size", 128)),
                                float(attack_settings.get("beta", 12.0)), int(suite["seed"]),
                                device)
    return {"dataset": suite["dataset"], "seed": int(suite["seed"]), "lambda": float(lam),
            "factor": factor, "long_run": dataclasses.asdict(long_settings(settings, factor)),
            "n_crafting": n_craft, "checkpoint": str(checkpoint), "per_eps": per_eps}


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per dataset: every (lambda, seed, eps) gap and the largest, for metrics.json."""
    out: dict[str, Any] = {}
    for result in results:
        entry = out.setdefault(result["dataset"], {"factor": result["factor"], "rows": []})
        for rec in result["per_eps"]:
            entry["rows"].append({"lambda": result["lambda"], "seed": result["seed"],
                                  **{k: rec[k] for k in (
                                      "eps", "shipped_worst_member", "shipped_worst_evasion_rate",
                                      "long_run_evasion_rate", "gap")}})
    for entry in out.values():
        entry["rows"].sort(key=lambda r: (r["lambda"], r["seed"], r["eps"]))
        entry["largest_gap"] = max(entry["rows"], key=lambda r: r["gap"])
    return out
