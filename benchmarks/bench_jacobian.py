"""Jacobian analysis: per-sample Jacobian methods, and the evaluate stage's analysis vs a
plain exact reference (K separate autograd.grad calls per batch, explicit float64 SVDs)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from benchmarks.common import Context, Row, interleaved, median, ratio_row, synchronize
from jacreg.jacobian import (
    JACOBIAN_METHOD,
    JACOBIAN_METHODS,
    class_pair_matrix,
    class_pair_samples,
    jacobian_statistics,
    pairwise_shared_metric,
    per_sample_jacobians,
    sample_pairs,
)
from jacreg.models import build_model

SECTION = "jacobian"
BATCH = 250  # analysis.batch_size of the paper profile
CLASSES = 10


# ----------------------------------------------------------------------------- the reference


def reference_jacobians(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, K, d) from K separate ``autograd.grad`` calls of the logit sums per batch."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(x), BATCH):
        xb = x[start:start + BATCH].to(device).requires_grad_(True)
        logits = model(xb)
        rows = []
        for k in range(logits.shape[1]):
            (grad,) = torch.autograd.grad(logits[:, k].sum(), xb,
                                          retain_graph=k < logits.shape[1] - 1)
            rows.append(grad.reshape(len(xb), -1))
        chunks.append(torch.stack(rows, dim=1).detach())
    return torch.cat(chunks)


def reference_statistics(jac: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every quantity from explicit SVDs in float64: per sample, and of the stacked J_X."""
    j = jac.double()
    n, k, d = j.shape
    _, s, vh = torch.linalg.svd(j, full_matrices=False)           # (N, K), (N, K, d)
    _, s_x, vh_x = torch.linalg.svd(j.reshape(n * k, d), full_matrices=False)  # materialized J_X
    return {"spectral": s[:, 0], "top_right_vectors": vh[:, 0],
            "frobenius": s.pow(2).sum(1).sqrt(),
            "stacked_spectral": s_x[0], "stacked_frobenius": s_x.pow(2).sum().sqrt(),
            "stacked_top_vector": vh_x[0]}


def reference_pairs(jac: torch.Tensor, ref: dict[str, torch.Tensor],
                    pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s_ij from the top singular value of the stacked pair [J_i; J_j] (2K x d), in float64."""
    j = jac.double()
    scores, cosines = [], []
    for start in range(0, len(pairs), 512):
        i, jj = pairs[start:start + 512, 0], pairs[start:start + 512, 1]
        joint = torch.linalg.svdvals(torch.cat([j[i], j[jj]], dim=1))[:, 0] ** 2
        scores.append(joint / (ref["spectral"][i] ** 2 + ref["spectral"][jj] ** 2))
        vi, vj = ref["top_right_vectors"][i], ref["top_right_vectors"][jj]
        cosines.append((vi * vj).sum(1).abs())
    return torch.cat(scores), torch.cat(cosines)


def reference_class_matrix(jac: torch.Tensor, ref: dict[str, torch.Tensor],
                           labels: torch.Tensor, per_cell: int,
                           generator: torch.Generator) -> torch.Tensor:
    """The class-pair matrix with the same pair draws as jacreg's, scored by reference_pairs."""
    matrix = torch.full((CLASSES, CLASSES), float("nan"), dtype=torch.float64)
    for (a, b), pairs in class_pair_samples(labels, CLASSES, per_cell, generator).items():
        scores, _ = reference_pairs(jac, ref, pairs)
        matrix[a, b] = matrix[b, a] = scores.mean()
    return matrix


# ------------------------------------------------------------------------------ comparisons


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    mask = ~(torch.isnan(a) | torch.isnan(b))
    return float((a[mask] - b[mask]).abs().max()) if bool(mask.any()) else 0.0


def agreement(out: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """How far the package's numbers are from the reference's."""
    stats, rstats = out["stats"], ref["stats"]
    return {
        "stacked_spectral_rel": _rel(stats.stacked_spectral, float(rstats["stacked_spectral"])),
        "stacked_frobenius_rel": _rel(stats.stacked_frobenius,
                                      float(rstats["stacked_frobenius"])),
        "stacked_top_vector_abs_cos": float((stats.stacked_top_vector.double()
                                             @ rstats["stacked_top_vector"]).abs()),
        "spectral_max_rel": float(((stats.spectral.double() - rstats["spectral"]).abs()
                                   / rstats["spectral"].clamp_min(1e-300)).max()),
        "frobenius_max_rel": float(((stats.frobenius.double() - rstats["frobenius"]).abs()
                                    / rstats["frobenius"].clamp_min(1e-300)).max()),
        "shared_scores_max_abs": _max_abs(out["scores"], ref["scores"]),
        "shared_cosines_max_abs": _max_abs(out["cosines"], ref["cosines"]),
        "class_matrix_max_abs": _max_abs(out["matrix"], ref["matrix"]),
        "jacobians_max_abs": _max_abs(out["jac"], ref["jac"]),
    }


def _configs(ctx: Context) -> list[tuple[str, int, int, int, int, int, int]]:
    """(arch, channels, size, n inputs, n pairs, pairs per class cell, rounds)."""
    if ctx.quick:
        return [("cnn_small", 1, 28, 250, 500, 10, 2)]
    configs = [("cnn", 1, 28, 1000, 2000, 20, ctx.slow_repeats)]
    if ctx.cuda:
        configs.append(("resnet18", 3, 32, 1000, 2000, 20, 2))
    return configs


def _model_and_data(arch: str, channels: int, size: int, n: int, device: torch.device):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=CLASSES, image_size=size)
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((n, channels, size, size), generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return model, x, y


def jacobian_methods(ctx: Context) -> list[Row]:
    """is_grads_batched VJPs vs vmap(jacrev) vs a loop of K VJPs, for per-sample Jacobians."""
    rows: list[Row] = []
    for arch, channels, size, n, *_ in _configs(ctx):
        rows += _methods_one(ctx, arch, channels, size, n if (ctx.cuda or ctx.quick) else 500)
    return rows


METHOD_LABELS = {"batched": "is_grads_batched VJPs", "vmap": "vmap(jacrev)",
                 "loop": "loop of K VJPs"}


def _methods_one(ctx: Context, arch: str, channels: int, size: int, n: int) -> list[Row]:
    model, x, _ = _model_and_data(arch, channels, size, n, ctx.device)
    x = x.to(ctx.device)
    results: dict[str, torch.Tensor] = {}

    def method(name: str):
        def run() -> None:
            out = [JACOBIAN_METHODS[name](model, x[s:s + BATCH]).detach()
                   for s in range(0, len(x), BATCH)]
            results[name] = torch.cat(out)
        return run

    ctx.log(f"  per-sample Jacobian methods {arch}, {n} inputs")
    samples = interleaved({METHOD_LABELS[m]: method(m) for m in ("batched", "vmap", "loop")},
                          ctx.device, max(2, ctx.slow_repeats), warmup=1)
    diffs = {m: _max_abs(results[m], results["batched"]) for m in results}
    chosen = METHOD_LABELS[JACOBIAN_METHOD.get(ctx.device.type, "loop")]
    fastest = min(samples, key=lambda k: median(samples[k]))
    details = {"inputs": n, "max_abs_diff_vs_batched": diffs, "src_default": chosen,
               "fastest": fastest}
    note = f"src uses {chosen}; fastest here: {fastest}"
    return [ratio_row(SECTION, f"per-sample Jacobians {arch}: {METHOD_LABELS[m]} vs "
                      "is_grads_batched", samples, METHOD_LABELS[m], METHOD_LABELS["batched"],
                      note=note, details=details)
            for m in ("vmap", "loop")]


def analysis(ctx: Context) -> list[Row]:
    """The evaluate stage's Jacobian analysis vs the plain exact reference, same inputs."""
    return [_analysis_one(ctx, *config) for config in _configs(ctx)]


def _analysis_one(ctx: Context, arch: str, channels: int, size: int, n: int, n_pairs: int,
                  per_cell: int, rounds: int) -> Row:
    model, x, y = _model_and_data(arch, channels, size, n, ctx.device)
    outputs: dict[str, dict[str, Any]] = {}
    parts: dict[str, list[dict[str, float]]] = {"jacreg": [], "reference": []}

    def clock(times: dict[str, float], key: str, started: float) -> float:
        synchronize(ctx.device)
        now = time.perf_counter()
        times[key] = now - started
        return now

    def package() -> None:
        times: dict[str, float] = {}
        t = time.perf_counter()
        jac = per_sample_jacobians(model, x, batch_size=BATCH).cpu()  # as evaluate does
        t = clock(times, "jacobians", t)
        stats = jacobian_statistics(jac)
        t = clock(times, "statistics", t)
        gen = torch.Generator().manual_seed(0)
        pairs = sample_pairs(n, n_pairs, gen)
        scores, cosines = pairwise_shared_metric(jac, stats, pairs)
        t = clock(times, "pairs", t)
        matrix = class_pair_matrix(jac, stats, y, CLASSES, per_cell, gen)
        clock(times, "class_matrix", t)
        parts["jacreg"].append(times)
        outputs["jacreg"] = {"jac": jac, "stats": stats, "scores": scores,
                             "cosines": cosines, "matrix": matrix}

    def reference() -> None:
        times: dict[str, float] = {}
        t = time.perf_counter()
        jac = reference_jacobians(model, x).cpu()
        t = clock(times, "jacobians", t)
        ref = reference_statistics(jac)
        t = clock(times, "statistics", t)
        gen = torch.Generator().manual_seed(0)
        pairs = sample_pairs(n, n_pairs, gen)
        scores, cosines = reference_pairs(jac, ref, pairs)
        t = clock(times, "pairs", t)
        matrix = reference_class_matrix(jac, ref, y, per_cell, gen)
        clock(times, "class_matrix", t)
        parts["reference"].append(times)
        outputs["reference"] = {"jac": jac, "stats": ref, "scores": scores,
                                "cosines": cosines, "matrix": matrix}

    # warm up the kernels (cuDNN autotuning) on one batch, then time whole runs only
    JACOBIAN_METHODS["loop"](model, x[:BATCH].to(ctx.device))
    reference_jacobians(model, x[:BATCH])
    ctx.log(f"  Jacobian analysis {arch}, {n} inputs, {n_pairs} pairs ({rounds} rounds)")
    samples = interleaved({"jacreg analysis": package, "plain exact reference": reference},
                          ctx.device, rounds, warmup=0)
    agree = agreement(outputs["jacreg"], outputs["reference"])
    breakdown = {who: {k: median([p[k] for p in runs]) for k in runs[0]}
                 for who, runs in parts.items()}
    ok = (agree["stacked_spectral_rel"] < 1e-5 and agree["spectral_max_rel"] < 1e-4
          and agree["shared_scores_max_abs"] < 1e-4
          and math.isclose(agree["stacked_top_vector_abs_cos"], 1.0, abs_tol=1e-4))
    row = ratio_row(SECTION, f"Jacobian analysis {arch} {size}x{size}, N={n}", samples,
                    "jacreg analysis", "plain exact reference", target=1.0,
                    note="same numbers as the reference" if ok
                    else "NUMBERS DIFFER from the reference",
                    details={"inputs": n, "pairs": n_pairs, "pairs_per_class_cell": per_cell,
                             "agreement": agree, "agrees": ok, "breakdown_s": breakdown})
    row.met = bool(row.met and ok)
    return row


def run(ctx: Context) -> list[Row]:
    return jacobian_methods(ctx) + analysis(ctx)
