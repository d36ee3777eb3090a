"""The attack suite per model: strong SGD-UAP and member scoring vs the paper's SGD-UAP.

For one model and one eps, as the workflow's ``attack`` and ``attack_suite`` jobs run them with
the quick profile's settings: the paper attack (``attack.epochs`` over the attack images), the
strong attack (``attack.strong``: restarts x losses runs of ``epochs`` over its crafting images,
plus one forward pass per epoch to keep the best iterate), and the scoring of the members
(paper, strong, four transfers) on the attack and test splits. The ratio strong / paper is the
suite's cost in units of the paper's attack; there is no target, it is reported. Each row's
``details.per_model_seconds`` gives what each member costs per model with the profile's
``attack.replicates`` R and its eps grid E: paper R x E runs, strong R x E runs, scoring E times
with 2 R + (lambdas - 1) members.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from benchmarks.common import Context, Row, interleaved, median, ratio_row
from jacreg.attack_suite import StrongSettings, member_names, score_members, strong_uap
from jacreg.models import build_model
from jacreg.uap import sgd_uap

SECTION = "suite"
REPO = Path(__file__).resolve().parents[1]


def run(ctx: Context) -> list[Row]:
    quick = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    attack = quick["attack"]
    replicates = int(attack.get("replicates", 1))
    n_eps = len(quick["epsilons"]["mnist5k"])
    strong = StrongSettings.from_config(attack["strong"])
    n_attack = 1000 if ctx.quick else attack["n_images"]
    n_strong = min(strong.n_images or n_attack, n_attack)
    n_test = 1000
    torch.manual_seed(0)
    model = build_model("cnn_small").to(ctx.device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((n_attack, 1, 28, 28), generator=gen).to(ctx.device)
    y = torch.randint(0, 10, (n_attack,), generator=gen).to(ctx.device)
    x_test = torch.rand((n_test, 1, 28, 28), generator=gen)
    y_test = torch.randint(0, 10, (n_test,), generator=gen)
    eps = 0.2
    names = member_names(quick["lambdas"], quick["lambdas"][0], replicates)
    members = {name: (torch.rand((1, 28, 28), generator=gen) * 2 - 1) * eps for name in names}

    def paper() -> None:
        sgd_uap(model, x, y, eps, epochs=attack["epochs"], batch_size=attack["batch_size"],
                device=ctx.device)

    def strong_attack() -> None:
        strong_uap(model, x[:n_strong], y[:n_strong], eps, strong,
                   batch_size=attack["batch_size"], device=ctx.device)

    def scoring() -> None:
        score_members(model, members, x.cpu(), y.cpu(), x_test, y_test)

    ctx.log(f"  attack suite, cnn_small, {n_attack} attack / {n_strong} crafting / {n_test} test")
    samples = interleaved({"paper SGD-UAP": paper, "strong SGD-UAP": strong_attack,
                           "member scoring": scoring}, ctx.device,
                          ctx.slow_repeats, warmup=0)
    per_run = {name: median(samples[key]) for name, key in (
        ("paper", "paper SGD-UAP"), ("strong", "strong SGD-UAP"), ("scoring", "member scoring"))}
    details = {"attack_images": n_attack, "strong_images": n_strong, "test_images": n_test,
               "eps": eps, "paper_epochs": attack["epochs"], "strong": vars(strong),
               "members": len(members), "replicates": replicates, "eps_grid": n_eps,
               "per_model_seconds": {"paper": round(replicates * n_eps * per_run["paper"], 2),
                                     "strong": round(replicates * n_eps * per_run["strong"], 2),
                                     "scoring": round(n_eps * per_run["scoring"], 2)}}
    return [
        ratio_row(SECTION, "strong SGD-UAP vs paper SGD-UAP, one eps (quick settings)", samples,
                  "strong SGD-UAP", "paper SGD-UAP",
                  note="restarts x losses runs + best-iterate passes", details=details),
        ratio_row(SECTION, "member scoring vs paper SGD-UAP, one eps (quick settings)", samples,
                  "member scoring", "paper SGD-UAP",
                  note=f"{len(members)} members on the attack and test splits",
                  details=details),
    ]
