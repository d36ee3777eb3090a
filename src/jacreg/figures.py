"""The run's nine matplotlib figures, rendered to PNG.

:func:`render_figures` builds every figure listed in :data:`FIGURES` (file name, heading,
caption; the names match ``FIGURES`` in ``rules/report.smk``, in the same order) from the
aggregated rows, the per-model evaluation files (class-pair shared-perturbation matrices), the
UAP tensors and the UAP transfer matrices, writes each atomically into ``figures_dir`` and returns
the PNG bytes by file name, for :mod:`jacreg.report` to embed in the HTML page. The headings and
captions are the text the report shows with each figure. Means and spreads are over seeds.
"""

from __future__ import annotations

import io
import math
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

from jacreg.report_data import (  # noqa: E402
    Row,
    _at_eps,
    _by_model,
    _eps_label,
    _f,
    _max_eps,
    _mean_std,
    _unique,
    _write,
)
from jacreg.uap import replicate_uaps  # noqa: E402

FIGURES: tuple[tuple[str, str, str], ...] = (
    ("evasion_vs_eps.png", "UAP evasion rate vs perturbation budget",
     "One line per λ (mean over seeds, band = ±1 std): solid, the paper's SGD-UAP; dotted, the "
     "worst case of the attack suite (strong SGD-UAP, transfer). Lower is more robust; the dashed "
     "line is a random ±ε perturbation of the same budget, the floor a universal perturbation "
     "should beat."),
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
        worst: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        rand: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            if r["dataset"] == ds:
                per_lam[_f(r["lambda"])][_f(r["eps"])].append(_f(r["uap_evasion_rate"]))
                worst[_f(r["lambda"])][_f(r["eps"])].append(_f(r.get("worst_uap_evasion_rate")))
                rand[_f(r["eps"])].append(_f(r["random_evasion_rate"]))
        for lam in sorted(per_lam):
            stats = [_mean_std(per_lam[lam][e]) for e in eps_grid]
            mean, std = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
            ax.plot(eps_grid, mean, "o-", color=colors[lam], label=f"λ={lam:g}")
            ax.fill_between(eps_grid, mean - std, mean + std, color=colors[lam], alpha=0.2)
            worst_mean = [_mean_std(worst[lam][e])[0] for e in eps_grid]
            if all(np.isfinite(worst_mean)):
                ax.plot(eps_grid, worst_mean, "s:", color=colors[lam], markersize=4,
                        label="worst case (dotted)" if lam == min(per_lam) else None)
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
            v = np.asarray(replicate_uaps(u)[0, k], dtype=float)  # replicate 0
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


def render_figures(rows: list[Row], datasets: list[str], evals: list[dict[str, Any]],
                   uaps: list[dict[str, Any]], transfer: dict[str, Any],
                   figures_dir: str | Path, dpi: int) -> dict[str, bytes]:
    """Write every figure of :data:`FIGURES` as ``figures_dir/<name>.png``, in that order, and
    return the PNG bytes by file name (``"evasion_vs_eps.png"``, ...), in the same order."""
    colors = _lambda_colors(_unique([_f(r["lambda"]) for r in rows]))
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
    images: dict[str, bytes] = {}
    for name, _, _ in FIGURES:
        images[name] = _save(builders[name](), figures_dir / name, dpi)
    return images
