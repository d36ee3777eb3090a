"""Input-output Jacobians: the training penalty and the exact analysis quantities.

Notation (DESIGN §2): logits f: R^d -> R^K, J(x) = df/dx in R^{K x d}.

Penalty (Hoffman, Roberts & Yaida, "Robust Learning with Jacobian Regularization",
arXiv:1908.02729)::

    R = 1/2 * (1/B) * sum_b ||J(x_b)||_F^2,   ||J||_F^2 = K * E_u ||u^T J||^2,

with u uniform on the unit sphere of R^K: ``n_proj`` draws per sample, each one vector-Jacobian
product through a double backward (``create_graph=True``); ``n_proj=-1`` uses the K basis
vectors and is exact.

Analysis (Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations", ICANN 2021): for inputs X = {x_1..x_N} the stacked Jacobian
J_X = [J(x_1); ...; J(x_N)] in R^{NK x d} bounds the first-order effect of any perturbation v::

    ||J_X v|| = (sum_i ||J(x_i) v||^2)^{1/2} <= ||J_X||_2 ||v||_2 <= ||J_X||_F ||v||_2.

Shared-perturbation metric of a pair (our derivation from the paper's theory)::

    s_ij = ||[J(x_i); J(x_j)]||_2^2 / (||J(x_i)||_2^2 + ||J(x_j)||_2^2)  in (0, 1],

equal to 1 iff one direction is maximal for both inputs; reported with |<v_i, v_j>|, the cosine of
the two top right singular vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jacreg.models import eval_mode
from jacreg.runtime import progress as progress_bar


def _unit_sphere(shape: tuple[int, ...], like: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    u = torch.randn(shape, generator=generator, device="cpu", dtype=like.dtype).to(like.device)
    return u / u.norm(dim=-1, keepdim=True)


def jacobian_penalty(x: torch.Tensor, logits: torch.Tensor, n_proj: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable R = 1/2 * mean_b ||J(x_b)||_F^2 (Hoffman et al. 2019 estimator).

    ``x`` must require grad and ``logits = model(x)``; per-sample Jacobians are assumed
    independent across the batch (exact for models without cross-sample layers in this mode).
    ``n_proj >= 1``: that many random projections per sample (unbiased); ``-1``: exact.
    """
    if not x.requires_grad:
        raise ValueError("jacobian_penalty needs x.requires_grad=True before the forward pass")
    if n_proj == 0 or n_proj < -1:
        raise ValueError(f"n_proj must be -1 (exact) or a positive integer, got {n_proj}")
    batch, classes = logits.shape
    if n_proj == -1:
        eye = torch.eye(classes, device=logits.device, dtype=logits.dtype)
        directions = [eye[k].expand(batch, classes) for k in range(classes)]
        scale = 1.0
    else:
        directions = [_unit_sphere((batch, classes), logits, generator) for _ in range(n_proj)]
        scale = classes / n_proj
    total = logits.new_zeros(())
    for u in directions:
        (vjp,) = torch.autograd.grad(logits, x, grad_outputs=u, create_graph=True)
        total = total + vjp.pow(2).sum()
    return 0.5 * scale * total / batch


def _jacobians_loop(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    """J(x_b) for one batch, (B, K, d): one forward, then K backward passes over its graph.

    Pass k backpropagates the k-th basis vector for every input at once, so row k of every
    J(x_b) comes from one ``autograd.grad`` call; the graph is kept for the next class.
    """
    xb = xb.detach().requires_grad_(True)
    logits = model(xb)
    batch, classes = logits.shape
    eye = torch.eye(classes, device=logits.device, dtype=logits.dtype)
    rows = []
    for k in range(classes):
        (row,) = torch.autograd.grad(logits, xb, grad_outputs=eye[k].expand(batch, classes),
                                     retain_graph=k < classes - 1)
        rows.append(row.reshape(batch, -1))
    return torch.stack(rows, dim=1)


def _jacobians_batched(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    """J(x_b) for one batch from one ``autograd.grad(..., is_grads_batched=True)`` call."""
    xb = xb.detach().requires_grad_(True)
    logits = model(xb)
    batch, classes = logits.shape
    eye = torch.eye(classes, device=logits.device, dtype=logits.dtype)
    grads = eye[:, None, :].expand(classes, batch, classes)
    (jac,) = torch.autograd.grad(logits, xb, grad_outputs=grads, is_grads_batched=True)
    return jac.reshape(classes, batch, -1).transpose(0, 1)


def _jacobians_vmap(model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    """J(x_b) for one batch from ``torch.func.vmap(torch.func.jacrev(f))`` over the inputs."""
    def single(xi: torch.Tensor) -> torch.Tensor:
        return model(xi.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(single))(xb.detach())
    return jac.reshape(jac.shape[0], jac.shape[1], -1)


#: Ways to compute the per-sample Jacobians of a batch; all give the same numbers (bit for bit
#: on the CPU). ``benchmarks`` times them side by side; ``per_sample_jacobians`` uses
#: ``JACOBIAN_METHOD`` per device type (docs/performance.md). The vmap batching rules of the
#: convolution and max-pool backward fall back to a loop over the K slices plus a
#: concatenation, so on the CPU the two vectorized forms cost more than the plain loop (0.57x
#: for the paper CNN); on an H100 the loop wins for ResNet-18 and loses ~10 ms per 1,000
#: inputs for the small CNNs.
JACOBIAN_METHODS = {"loop": _jacobians_loop, "batched": _jacobians_batched,
                    "vmap": _jacobians_vmap}
JACOBIAN_METHOD = {"cpu": "loop", "cuda": "loop"}


def per_sample_jacobians(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                         progress: bool = False) -> torch.Tensor:
    """Exact J(x_i) for every input, shape (N, K, d): K vector-Jacobian products per batch.

    The model runs in eval mode (its mode is restored after): with BatchNorm or Dropout the
    Jacobians are those of the deployed model, independent of the batch and of random masks.
    """
    device = next(model.parameters()).device
    compute = JACOBIAN_METHODS[JACOBIAN_METHOD.get(device.type, "loop")]
    chunks = []
    with eval_mode(model):
        for start in progress_bar(range(0, len(x), batch_size), desc="jacobians",
                                  disable=not progress, every=0.25):
            xb = x[start:start + batch_size].to(device)
            chunks.append(compute(model, xb).detach())
    return torch.cat(chunks)


@dataclass
class JacobianStatistics:
    """Everything the analysis reports about a set of per-sample Jacobians, from one pass."""

    frobenius: torch.Tensor          # (N,) ||J(x_i)||_F
    spectral: torch.Tensor           # (N,) sigma_i = ||J(x_i)||_2
    top_right_vectors: torch.Tensor  # (N, d) v_i, unit top right singular vectors
    grams: torch.Tensor              # (N, K, K) J(x_i) J(x_i)^T
    stacked_spectral: float          # ||J_X||_2
    stacked_frobenius: float         # ||J_X||_F
    stacked_top_vector: torch.Tensor  # (d,) top right singular vector of J_X: the linearized L2 UAP


def jacobian_statistics(jacobians: torch.Tensor) -> JacobianStatistics:
    """Per-sample and stacked norms of ``jacobians`` (N, K, d), exactly, in float64.

    sigma_i comes from the K x K Gram J_i J_i^T; ||J_X||_2^2 is the top eigenvalue of
    sum_i J_i^T J_i (d x d), or of the NK x NK Gram when that is smaller.
    """
    jac = jacobians.double()
    n, k, d = jac.shape
    grams = jac @ jac.transpose(1, 2)
    evals, evecs = torch.linalg.eigh(grams)
    top_val = evals[:, -1].clamp_min(0.0)
    spectral = top_val.sqrt()
    u = evecs[:, :, -1]                                   # (N, K)
    v = torch.einsum("nk,nkd->nd", u, jac)                # J_i^T u_i = sigma_i v_i
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    flat = jac.reshape(n * k, d)
    if d <= n * k:
        eval_s, evec_s = torch.linalg.eigh(flat.T @ flat)
        stacked_top = evec_s[:, -1]
    else:
        eval_s, evec_s = torch.linalg.eigh(flat @ flat.T)
        stacked_top = flat.T @ evec_s[:, -1]
        stacked_top = stacked_top / stacked_top.norm().clamp_min(1e-30)
    return JacobianStatistics(
        frobenius=jac.pow(2).sum(dim=(1, 2)).sqrt().float(),
        spectral=spectral.float(),
        top_right_vectors=v.float(),
        grams=grams,
        stacked_spectral=float(eval_s[-1].clamp_min(0.0).sqrt()),
        stacked_frobenius=float(jac.pow(2).sum().sqrt()),
        stacked_top_vector=stacked_top.float(),
    )


def stacked_spectral_norm(model: nn.Module, x: torch.Tensor, iters: int = 100,
                          method: str = "auto", batch_size: int = 256,
                          max_exact_dim: int = 4096, seed: int = 0) -> float:
    """||J_X||_2 for the inputs ``x`` of ``model``.

    ``method="exact"`` materializes the per-sample Jacobians and takes the top eigenvalue of a
    Gram matrix; ``"power"`` runs ``iters`` power iterations on J_X^T J_X with one
    Jacobian-vector and one vector-Jacobian product per iteration and per batch (never forming
    J_X); ``"auto"`` is exact when the input dimension is at most ``max_exact_dim``.
    """
    d = x[0].numel()
    if method == "auto":
        method = "exact" if d <= max_exact_dim else "power"
    if method == "exact":
        return jacobian_statistics(per_sample_jacobians(model, x, batch_size)).stacked_spectral
    if method != "power":
        raise ValueError(f"method must be 'auto', 'exact' or 'power', got {method!r}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x[0].shape, generator=gen).to(device)
    v = v / v.norm()
    sigma_sq = 0.0
    for _ in range(iters):
        w = torch.zeros_like(v)
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            _, jv = torch.func.jvp(model, (xb,), (v.expand_as(xb),))      # J_i v, (B, K)
            xr = xb.clone().requires_grad_(True)
            (jtjv,) = torch.autograd.grad(model(xr), xr, grad_outputs=jv)   # J_i^T J_i v
            w += jtjv.sum(dim=0)
        sigma_sq = float((w * v).sum())
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return max(sigma_sq, 0.0) ** 0.5


def sample_pairs(n: int, n_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """``n_pairs`` random index pairs (i, j), i != j, shape (P, 2)."""
    first = torch.randint(0, n, (n_pairs,), generator=generator)
    offset = torch.randint(1, n, (n_pairs,), generator=generator)
    return torch.stack([first, (first + offset) % n], dim=1)


def pairwise_shared_metric(jacobians: torch.Tensor, stats: JacobianStatistics,
                           pairs: torch.Tensor,
                           chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_ij, |<v_i, v_j>|) for each row (i, j) of ``pairs``; s from the 2K x 2K Gram."""
    scores, cosines = [], []
    for start in range(0, len(pairs), chunk):
        i, j = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        cross = torch.einsum("pkd,pld->pkl", jacobians[i].double(), jacobians[j].double())
        gram = torch.cat([
            torch.cat([stats.grams[i], cross], dim=2),
            torch.cat([cross.transpose(1, 2), stats.grams[j]], dim=2),
        ], dim=1)
        joint = torch.linalg.eigvalsh(gram)[:, -1]
        denom = stats.spectral[i].double() ** 2 + stats.spectral[j].double() ** 2
        scores.append((joint / denom.clamp_min(1e-300)).float())
        cosines.append((stats.top_right_vectors[i] * stats.top_right_vectors[j]).sum(1).abs())
    return torch.cat(scores), torch.cat(cosines)


def class_pair_samples(labels: torch.Tensor, num_classes: int, per_cell: int,
                       generator: torch.Generator) -> dict[tuple[int, int], torch.Tensor]:
    """For each class pair a <= b, ``per_cell`` random index pairs (i, j) with y_i = a, y_j = b.

    Cells whose classes are absent from ``labels`` (or a == b with one member) are left out.
    """
    cells: dict[tuple[int, int], torch.Tensor] = {}
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    for a in range(num_classes):
        for b in range(a, num_classes):
            ia, ib = members[a], members[b]
            if len(ia) == 0 or len(ib) == 0 or (a == b and len(ia) < 2):
                continue
            if a == b:
                local = sample_pairs(len(ia), per_cell, generator)
                cells[(a, b)] = torch.stack([ia[local[:, 0]], ia[local[:, 1]]], dim=1)
            else:
                cells[(a, b)] = torch.stack([
                    ia[torch.randint(0, len(ia), (per_cell,), generator=generator)],
                    ib[torch.randint(0, len(ib), (per_cell,), generator=generator)],
                ], dim=1)
    return cells


def class_pair_matrix(jacobians: torch.Tensor, stats: JacobianStatistics, labels: torch.Tensor,
                      num_classes: int, per_cell: int,
                      generator: torch.Generator) -> torch.Tensor:
    """K x K matrix: mean s_ij over ``per_cell`` random pairs with y_i = a, y_j = b.

    A cell without members (a class absent from the analysis set) is NaN.
    """
    matrix = torch.full((num_classes, num_classes), float("nan"))
    for (a, b), pairs in class_pair_samples(labels, num_classes, per_cell, generator).items():
        scores, _ = pairwise_shared_metric(jacobians, stats, pairs)
        matrix[a, b] = matrix[b, a] = scores.mean()
    return matrix


def linearized_logit_change(jacobians: torch.Tensor, perturbation: torch.Tensor) -> float:
    """||J_X v|| = (sum_i ||J(x_i) v||^2)^{1/2}: the first-order logit change of v on X."""
    v = perturbation.reshape(-1).to(jacobians).double()
    return float((jacobians.double() @ v).pow(2).sum().sqrt())
