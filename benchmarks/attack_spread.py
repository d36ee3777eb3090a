"""How much one run of an attack varies, and what its settings cost: the data behind
``attack.replicates`` and the per-replicate settings of the shipped profiles.

SGD-UAP with a constant sign step is a chaotic optimizer: two runs that differ only in the order
of their mini-batches (or in the last bits of floating point) end at different perturbations
with different evasion rates. For trained models of a run, this measures, per setting
(epochs, crafting images) of the paper attack and of the strong attack, R replicates that
differ only in their seed (batch order; the strong attack's random starts), and reports the
mean and standard deviation over the replicates of the test-split evasion and the seconds one
replicate takes. A setting is cheap enough to replace the profile's single run when its mean
stays within the replicates' standard error of the reference setting's mean.

    python -m benchmarks.attack_spread --run quick --lambdas 0,0.1,1 --eps 0.3 \
        --settings 5x4000,2x4000,2x2000,1x4000 --replicates 6 --out benchmarks/out/spread.json

Settings are ``EPOCHSxIMAGES`` for the paper attack; ``--strong`` adds the strong attack with
the profile's ``attack.strong`` at each ``EPOCHSxIMAGES`` in ``--strong-settings``. The models
and data are read from ``results/{run}/models/{dataset}`` and ``data/prepared/{dataset}.pt``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import hardware, load_average
from jacreg.attack_suite import StrongSettings, evasion_rate, replicate_seed, strong_uap
from jacreg.data import load_prepared, to_float
from jacreg.models import load_checkpoint
from jacreg.uap import sgd_uap

REPO = Path(__file__).resolve().parents[1]


def parse_settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        epochs, images = item.lower().split("x")
        out.append((int(epochs), int(images)))
    return out


def summarize(rates: list[float], seconds: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(rates),
            "sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "min": min(rates), "max": max(rates),
            "seconds_per_replicate": statistics.median(seconds), "rates": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attack_spread",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quick")
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--lambdas", default="0,0.1,1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--eps", default="0.3")
    parser.add_argument("--settings", default="5x4000,3x4000,2x4000,2x2000,1x4000")
    parser.add_argument("--strong-settings", default="",
                        help="EPOCHSxIMAGES list for the strong attack (empty: skip it)")
    parser.add_argument("--strong-losses", default=None,
                        help="comma-separated losses of the strong attack (default: the profile's)")
    parser.add_argument("--strong-restarts", type=int, default=None,
                        help="random starts of the strong attack (default: the profile's)")
    parser.add_argument("--replicates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "spread.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # the profile's attack settings over config.yaml's, as Snakemake merges them
    attack = {**yaml.safe_load((REPO / "config.yaml").read_text())["attack"],
              **yaml.safe_load((REPO / args.config).read_text())["attack"]}
    strong_config = dict(attack.get("strong") or {})
    if args.strong_losses:
        strong_config["losses"] = args.strong_losses.split(",")
    if args.strong_restarts is not None:
        strong_config["restarts"] = args.strong_restarts
    strong = StrongSettings.from_config(strong_config)
    tensors = load_prepared(REPO / "data" / "prepared" / f"{args.dataset}.pt")
    x_all, y_all = to_float(tensors["x_attack"]), tensors["y_attack"]
    x_test, y_test = to_float(tensors["x_test"]), tensors["y_test"]
    results = []
    load_before = load_average()
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for lam in [float(v) for v in args.lambdas.split(",")]:
            path = (REPO / "results" / args.run / "models" / args.dataset
                    / f"lam{lam:g}_seed{seed}.pt")
            model = load_checkpoint(path, device="cpu")
            for eps in [float(e) for e in args.eps.split(",")]:
                cases = [("paper", s) for s in parse_settings(args.settings)]
                if args.strong_settings:
                    cases += [("strong", s) for s in parse_settings(args.strong_settings)]
                for kind, (epochs, images) in cases:
                    x, y = x_all[:images], y_all[:images]
                    rates, seconds = [], []
                    for r in range(args.replicates):
                        t0 = time.perf_counter()
                        if kind == "paper":
                            v = sgd_uap(model, x, y, eps, epochs=epochs,
                                        batch_size=attack["batch_size"], beta=attack["beta"],
                                        step_size=attack["step_fraction"] * eps,
                                        seed=replicate_seed(seed, r))
                        else:
                            v = strong_uap(model, x, y, eps, strong,
                                           batch_size=attack["batch_size"], beta=attack["beta"],
                                           seed=replicate_seed(seed, r), epochs=epochs).uap
                        seconds.append(time.perf_counter() - t0)
                        rates.append(evasion_rate(model, x_test, y_test, v))
                    summary = summarize(rates, seconds)
                    results.append({"attack": kind, "lambda": lam, "seed": seed, "eps": eps,
                                    "epochs": epochs, "images": images,
                                    **({"strong": vars(strong)} if kind == "strong" else {}),
                                    **summary})
                    print(f"{kind:6s} lam={lam:<4g} seed={seed} eps={eps:g} {epochs}x{images:<5d}"
                          f" mean={summary['mean']:.3f} sd={summary['sd']:.3f} "
                          f"[{summary['min']:.3f}, {summary['max']:.3f}] "
                          f"{summary['seconds_per_replicate']:.2f} s/replicate", flush=True)
    out = {"schema": "jacreg-attack-spread-v1", "command": " ".join(
               ["python", "-m", "benchmarks.attack_spread", *(argv or sys.argv[1:])]),
           "hardware": {**hardware(torch.device("cpu")), "load_average_before": load_before,
                        "load_average_after": load_average()},
           "total_seconds": round(time.perf_counter() - started, 1), "rows": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
