"""Command-line entry points, one per workflow stage: ``jacreg {prepare,train,attack,...}``.

Each Snakemake rule calls exactly one of these. They parse arguments, set threads, seeds and the
device, call the package, and write their outputs atomically; the science lives in the modules.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from jacreg import runtime
from jacreg.config import config_sha256
from jacreg.io import atomic_open, read_json, save_torch, write_json
from jacreg.user_code import trust


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")


def _settings(text: str) -> dict[str, Any]:
    return json.loads(text)


def cmd_prepare(args: argparse.Namespace) -> None:
    from jacreg.data import prepare_dataset

    runtime.setup_logging("prepare")
    runtime.set_threads(args.threads)
    try:
        sources = json.loads(args.sources) if args.sources else {}
        digests = json.loads(args.digests) if args.digests else {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"jacreg prepare: --sources / --digests is not valid JSON: {error}") \
            from error
    if not isinstance(sources, dict) or not isinstance(digests, dict):
        raise SystemExit("jacreg prepare: --sources and --digests must be JSON mappings "
                         "dataset -> source, dataset -> {file name: sha256}")
    try:
        if args.custom:  # your own dataset: the data.custom entry (jacreg.custom_data)
            from jacreg.custom_data import prepare_custom

            prepare_custom(args.dataset, json.loads(args.custom), args.out,
                           raw_dir=args.raw_dir, source=sources.get(args.dataset),
                           digests=digests.get(args.dataset) or None)
        else:
            prepare_dataset(args.dataset, args.out, raw_dir=args.raw_dir,
                            source=sources.get(args.dataset),  # None: torchvision's mirrors
                            digests=digests.get(args.dataset) or None)
    except (RuntimeError, ValueError) as error:  # ChecksumError, DownloadError: name the cause
        raise SystemExit(f"jacreg prepare {args.dataset}: {error}") from error


def cmd_train(args: argparse.Namespace) -> None:
    from jacreg.data import load_prepared_spec, to_float
    from jacreg.models import architecture_kwargs, save_checkpoint
    from jacreg.train import train_model

    log = runtime.setup_logging("train")
    threads = runtime.set_threads(args.threads)
    device = runtime.resolve_device(args.device)
    runtime.configure_backends(device)
    runtime.seed_everything(args.seed)
    settings = _settings(args.settings)
    tensors, spec = load_prepared_spec(args.data, args.dataset)  # custom: recorded in the file
    x, y = to_float(tensors["x_train"]), tensors["y_train"]
    out = Path(args.out)
    state_path = out.with_name(out.stem + ".resume.pt")
    log.info("train dataset=%s lambda=%g seed=%d n=%d device=%s threads=%d %s settings=%s",
             args.dataset, args.lam, args.seed, len(x), device, threads,
             runtime.cpu_allocation(), json.dumps(settings))
    started = time.perf_counter()
    model, history = train_model(x, y, spec, settings, args.lam, args.seed, device,
                                 state_path=state_path)
    meta = {"dataset": args.dataset, "lambda": args.lam, "seed": args.seed,
            "settings": settings, "history": history, "device": str(device),
            "threads": threads, "seconds": time.perf_counter() - started,
            "torch": str(torch.__version__)}
    save_checkpoint(model, out, settings["architecture"],
                    architecture_kwargs(spec.channels, spec.num_classes, spec.image_size,
                                        settings.get("arch_kwargs")), meta)
    state_path.unlink(missing_ok=True)
    log.info("wrote %s (%.1f s)", out, meta["seconds"])


def cmd_import_model(args: argparse.Namespace) -> None:
    from jacreg.pretrained import import_model

    runtime.setup_logging("import-model")
    runtime.set_threads(args.threads)
    try:
        import_model(args.source, args.out, args.dataset, args.lam, args.seed,
                     args.architecture, _settings(args.arch_kwargs), args.data)
    except ValueError as error:
        raise SystemExit(f"jacreg import-model {args.dataset}: {error}") from error


def cmd_attack(args: argparse.Namespace) -> None:
    from jacreg.attack_suite import StrongSettings, replicate_seed, strong_uap
    from jacreg.data import load_prepared_spec, to_float
    from jacreg.models import load_checkpoint
    from jacreg.preflight import target_class_problem
    from jacreg.uap import UAP_FORMAT, sgd_uap

    log = runtime.setup_logging("attack")
    runtime.set_threads(args.threads)
    device = runtime.resolve_device(args.device)
    runtime.configure_backends(device)
    runtime.seed_everything(args.seed)
    settings = _settings(args.settings)
    strong = StrongSettings.from_config(settings.get("strong"))
    replicates = int(settings.get("replicates", 1))
    eps_list = [float(e) for e in json.loads(args.eps)]
    tensors, spec = load_prepared_spec(args.data, args.dataset)
    target = settings.get("target_class")
    if target is not None and not 0 <= int(target) < spec.num_classes:
        # checked before any job where K is known then (preflight), here for the rest
        raise SystemExit(target_class_problem(int(target), args.dataset, spec.num_classes,
                                              f"recorded in {args.data}"))
    model = load_checkpoint(args.checkpoint, device=device)
    n = settings["n_images"]
    x, y = to_float(tensors["x_attack"][:n]), tensors["y_attack"][:n]
    x, y = x.to(device), y.to(device)
    n_strong = min(strong.n_images or len(x), len(x))
    xs, ys = x[:n_strong], y[:n_strong]
    targeted = settings.get("target_class") is not None  # the suite is untargeted
    uaps: list[list[torch.Tensor]] = []
    strong_uaps: list[list[torch.Tensor]] = []
    strong_info: list[dict[str, Any]] = []
    for replicate in range(replicates):
        seed = replicate_seed(args.seed, replicate)  # batch order and random starts
        paper_r: list[torch.Tensor] = []
        strong_r: list[torch.Tensor] = []
        for eps in eps_list:
            started = time.perf_counter()
            v = sgd_uap(model, x, y, eps, epochs=settings["epochs"],
                        batch_size=settings["batch_size"], beta=settings["beta"],
                        step_size=settings["step_fraction"] * eps,
                        target_class=settings.get("target_class"), seed=seed, device=device,
                        progress=True)
            log.info("paper replicate=%d eps=%g n_images=%d linf=%.4f l2=%.4f seconds=%.1f",
                     replicate, eps, len(x), float(v.abs().max()), float(v.norm()),
                     time.perf_counter() - started)
            paper_r.append(v)
            if targeted:
                continue
            started = time.perf_counter()
            result = strong_uap(model, xs, ys, eps, strong, batch_size=settings["batch_size"],
                                beta=settings["beta"], seed=seed, device=device, progress=True)
            strong_r.append(result.uap)
            strong_info.append({"replicate": replicate, "eps": eps,
                                "crafting_evasion_rate": result.crafting_evasion_rate,
                                "start": result.start, "epoch": result.epoch,
                                "loss": result.loss, "per_start": result.per_start,
                                "n_images": n_strong,
                                "seconds": time.perf_counter() - started})
            log.info("strong replicate=%d eps=%g n_images=%d crafting_evasion=%.4f start=%d "
                     "loss=%s epoch=%d per_run=%s seconds=%.1f", replicate, eps, n_strong,
                     result.crafting_evasion_rate, result.start, result.loss, result.epoch,
                     [round(r, 4) for r in result.per_start], strong_info[-1]["seconds"])
        uaps.append(paper_r)
        if strong_r:
            strong_uaps.append(strong_r)
    payload: dict[str, Any] = {
        "format": UAP_FORMAT, "replicates": replicates,
        "eps": torch.tensor(eps_list, dtype=torch.float64),
        "uaps": torch.stack([torch.stack(r) for r in uaps]),  # (R, E, C, H, W)
        "dataset": args.dataset, "lambda": args.lam, "seed": args.seed, "settings": settings}
    if strong_uaps:
        check = strong_uap(model, xs, ys, strong.check_eps, strong,
                           batch_size=settings["batch_size"], beta=settings["beta"],
                           seed=args.seed, device=device, restarts=0,
                           epochs=strong.check_epochs)
        log.info("large-budget check eps=%g crafting_evasion=%.4f", strong.check_eps,
                 check.crafting_evasion_rate)
        payload.update({"strong_uaps": torch.stack([torch.stack(r) for r in strong_uaps]),
                        "strong_info": strong_info,
                        "check_eps": strong.check_eps, "check_uap": check.uap,
                        "check_crafting_evasion_rate": check.crafting_evasion_rate})
    save_torch(payload, args.out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from jacreg.evaluate import evaluate_model

    runtime.setup_logging("evaluate")
    runtime.set_threads(args.threads)
    device = runtime.resolve_device(args.device)
    runtime.seed_everything(args.seed)
    result = evaluate_model(args.checkpoint, args.uaps, args.data, args.dataset, args.lam,
                            args.seed, _settings(args.settings), device)
    write_json(result, args.out)


def cmd_suite(args: argparse.Namespace) -> None:
    from jacreg.attack_suite import evaluate_suite

    log = runtime.setup_logging("suite")
    runtime.set_threads(args.threads)
    device = runtime.resolve_device(args.device)
    lambdas = [float(x) for x in json.loads(args.lambdas)]
    started = time.perf_counter()
    summary, outcomes = evaluate_suite(args.checkpoints, args.uaps, lambdas, args.data,
                                       args.dataset, args.seed, args.attack_images,
                                       args.batch_size, device,
                                       _settings(args.settings) if args.settings else None)
    save_torch(outcomes, args.outcomes)
    write_json(summary, args.out)
    log.info("wrote %s and %s (%d models x %d eps, %.1f s)", args.out, args.outcomes,
             len(lambdas), len(summary["eps_list"]), time.perf_counter() - started)


def cmd_convergence(args: argparse.Namespace) -> None:
    from jacreg.convergence import run_convergence

    log = runtime.setup_logging("convergence")
    runtime.set_threads(args.threads)
    device = runtime.resolve_device(args.device)
    runtime.configure_backends(device)
    started = time.perf_counter()
    result = run_convergence(args.checkpoint, args.suite, args.data, args.lam,
                             _settings(args.settings), args.factor, device)
    write_json(result, args.out)
    log.info("wrote %s (largest gap %+.4f, %.0f s)", args.out,
             max(r["gap"] for r in result["per_eps"]), time.perf_counter() - started)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's commit, with ``-dirty`` when a tracked file outside ``reports/`` differs from it.

    ``reports/`` is left out: the run itself rewrites the committed report files there (and
    Snakemake deletes a job's old outputs before the job runs), so every run would be "dirty"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10, cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)reports"], capture_output=True, text=True,
                               timeout=10, cwd=cwd).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cmd_aggregate(args: argparse.Namespace) -> None:
    from jacreg.aggregate import aggregate_run
    from jacreg.io import load_torch
    from jacreg.metrics import evasion_curve_table

    log = runtime.setup_logging("aggregate")
    config = json.loads(args.config)
    started = time.perf_counter()
    result = aggregate_run([read_json(p) for p in args.evals],
                           [read_json(p) for p in args.suites],
                           [load_torch(p) for p in args.outcomes], config,
                           [read_json(p) for p in args.convergence])
    metrics = {"run": config["run_name"], "git_commit": git_commit(),
               "config_sha256": config_sha256(config),
               "environment": runtime.environment_info(), "config": config, **result}
    write_json(metrics, args.out)
    if args.curve:
        curve = evasion_curve_table(result["rows"])
        with atomic_open(args.curve, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(curve[0]))
            writer.writeheader()
            writer.writerows(curve)
    for claim in result["claims"]:
        log.info("claim=%s attack=%s dataset=%s value=%s interval=%s threshold=%s verdict=%s",
                 claim["id"], claim["attack"], claim["dataset"], claim["value"],
                 claim["interval"], claim["threshold"], claim["verdict"])
    log.info("aggregated in %.1f s", time.perf_counter() - started)


def cmd_compare(args: argparse.Namespace) -> None:
    from jacreg.compare import compare_runs, format_comparison

    result = compare_runs(read_json(args.a), read_json(args.b))
    print(format_comparison(result))
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")
    if result["claims_agree"] < result["claims_total"] and not args.report_only:
        raise SystemExit(1)


def cmd_report(args: argparse.Namespace) -> None:
    from jacreg.report import render_report

    runtime.setup_logging("report")
    benchmarks = sorted(Path(args.benchmarks_dir).rglob("*.tsv")) if args.benchmarks_dir else []
    render_report(args.metrics, args.evals, args.uaps, benchmarks, args.html, args.figures_dir,
                  dpi=args.dpi)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jacreg", description=__doc__)
    parser.add_argument("--allow-architecture", action="append", default=[], metavar="IMPORT",
                        help="an import path 'package.module:factory' the configuration names; "
                             "checkpoints naming any other are refused (repeatable)")
    parser.add_argument("--code-dir", action="append", default=[], metavar="DIR",
                        help="a folder searched first for those modules (config "
                             "models.code_dirs; repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download/verify/convert a dataset into a tensor file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--raw-dir", default="data/raw")
    p.add_argument("--sources", default="",
                   help="JSON mapping dataset -> source (config data.sources): an http(s) base "
                        "URL, a local directory or file:// URL; absent or null: torchvision's "
                        "mirrors")
    p.add_argument("--digests", default="",
                   help="JSON mapping dataset -> {file name: sha256 of its decompressed content} "
                        "replacing the recorded digests (config data.digests)")
    p.add_argument("--custom", default="",
                   help="JSON: the config's data.custom entry of this dataset (your own data)")
    _common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("import-model",
                       help="turn a state dict trained elsewhere into a jacreg checkpoint")
    p.add_argument("--dataset", required=True)
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--source", required=True, help="the state-dict file (weights-only)")
    p.add_argument("--data", required=True, help="the prepared dataset")
    p.add_argument("--architecture", required=True, help="import path package.module:factory")
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments of the factory")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_import_model)

    model_args = [("--dataset", str), ("--lam", float), ("--seed", int)]
    p = sub.add_parser("train", help="train one model at one lambda and seed")
    for flag, kind in model_args:
        p.add_argument(flag, type=kind, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON training settings")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("attack", help="craft one SGD-UAP per eps against one model")
    for flag, kind in model_args:
        p.add_argument(flag, type=kind, required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--eps", required=True, help="JSON list of eps")
    p.add_argument("--settings", required=True, help="JSON attack settings")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("evaluate", help="rates and Jacobian analysis of one model")
    for flag, kind in model_args:
        p.add_argument(flag, type=kind, required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--uaps", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON analysis settings")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("suite", help="attack suite and worst-case UAP of one seed's models")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--lambdas", required=True, help="JSON list, parallel to --checkpoints")
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--uaps", nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--attack-images", type=int, required=True,
                   help="the first n attack-split images, on which the worst member is chosen")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--settings", default="",
                   help="JSON attack settings (config attack): the warm-start members' "
                        "attack.strong.warm_epochs, batch_size and beta")
    p.add_argument("--out", required=True, help="JSON summary")
    p.add_argument("--outcomes", required=True, help="per-input test outcomes (.pt)")
    _common(p)
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("convergence", help="the strong attack with factor x the restarts and "
                                           "epochs on one model: its gap to the worst case")
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--suite", required=True, help="the attack-suite JSON of the model's seed")
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON attack settings")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_convergence)

    p = sub.add_parser("aggregate", help="metrics.json with every row and claims C1-C4")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--suites", nargs="+", required=True,
                   help="attack-suite JSON summaries (one per dataset and seed)")
    p.add_argument("--outcomes", nargs="+", required=True,
                   help="attack-suite per-input outcomes (.pt, one per dataset and seed)")
    p.add_argument("--convergence", nargs="*", default=[],
                   help="long-run results (analysis.convergence), one per model")
    p.add_argument("--config", required=True, help="JSON configuration")
    p.add_argument("--out", required=True)
    p.add_argument("--curve", default=None, help="CSV of the seed-averaged evasion curves")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("compare", help="do two runs of one profile reach the same verdicts? "
                                       "(the second-machine check)")
    p.add_argument("a", help="metrics.json of run A")
    p.add_argument("b", help="metrics.json of run B")
    p.add_argument("--out", default=None, help="write the comparison as JSON")
    p.add_argument("--report-only", action="store_true",
                   help="exit 0 even when a claim x attack pair disagrees (default: exit 1)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="figures and the self-contained HTML report")
    p.add_argument("--metrics", required=True)
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--uaps", nargs="+", required=True)
    p.add_argument("--benchmarks-dir", default=None)
    p.add_argument("--html", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--dpi", type=int, default=110)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    trust(args.allow_architecture, args.code_dir)  # what checkpoints may import (config)
    args.func(args)


if __name__ == "__main__":
    main()
