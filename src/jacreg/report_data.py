"""Row shaping and small helpers shared by :mod:`jacreg.figures` and :mod:`jacreg.report`.

A *row* is one ``(dataset, lambda, seed, eps)`` result from ``metrics.json``. This module holds
the float coercion (JSON null -> NaN), the mean and sample standard deviation over seeds
(ddof=1, 0 for a single seed), the grouping of rows by model or by budget, the ε label used in
titles and tables, and the atomic, world-readable file write used for every output.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jacreg.io import atomic_open

Row = dict[str, Any]


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


def _write(path: Path, data: bytes) -> None:
    """Atomic write; world-readable like a normal file (``mkstemp`` would leave it 0600)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o644)
