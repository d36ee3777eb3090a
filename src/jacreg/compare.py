"""Do two runs of the same profile reach the same verdicts? The second-machine check.

A verdict is a property of the science only if it survives what changes between computers:
the last bits of floating point, which the attacks amplify. Two runs of one profile whose
floating point differs in the last bits (1 vs 2 threads per job, or two machines) are compared:

- for every (dataset, attack, claim): A's value inside B's interval, B's value inside A's
  interval, and the same verdict; a pair *agrees* when all three hold;
- for every seed-averaged rate with an interval (dataset, attack, lambda, eps): A's rate inside
  B's interval and vice versa;
- per row (dataset, lambda, seed, eps): the largest differences of clean accuracy, of the
  paper attack's evasion (the mean over its replicates), of one run of the paper attack (its
  replicate 0: what a single run, as the authors' procedure, would have reported) and of the
  worst case, each with the row where it occurs.

``jacreg compare A/metrics.json B/metrics.json`` prints this and writes it as JSON;
``scripts/second-machine-check.sh`` runs a profile twice and calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

ROW_KEY = ("dataset", "lambda", "seed", "eps")
ROW_QUANTITIES = {
    "clean_accuracy": lambda r: r.get("clean_accuracy"),
    "uap_evasion_rate": lambda r: r.get("uap_evasion_rate"),
    "uap_evasion_rate_replicate0": lambda r: (r.get("uap_evasion_rate_replicates")
                                              or [r.get("uap_evasion_rate")])[0],
    "worst_uap_evasion_rate": lambda r: r.get("worst_uap_evasion_rate"),
}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def inside(value: Any, interval: Sequence[Any] | None) -> bool:
    """``value`` within the closed ``interval``; False when either is undefined."""
    number = _number(value)
    if number is None or not interval or len(interval) != 2:
        return False
    low, high = _number(interval[0]), _number(interval[1])
    return low is not None and high is not None and low <= number <= high


def _claims(metrics: Mapping[str, Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    return {(str(c["dataset"]), str(c.get("attack", "paper")), str(c["id"])): c
            for c in metrics.get("claims", [])}


def compare_claims(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per (dataset, attack, claim) present in both runs."""
    claims_a, claims_b = _claims(a), _claims(b)
    out = []
    for key in sorted(set(claims_a) & set(claims_b)):
        ca, cb = claims_a[key], claims_b[key]
        a_in_b, b_in_a = inside(ca.get("value"), cb.get("interval")), inside(
            cb.get("value"), ca.get("interval"))
        same = ca.get("verdict") == cb.get("verdict")
        out.append({"dataset": key[0], "attack": key[1], "claim": key[2],
                    "a": {k: ca.get(k) for k in ("value", "interval", "verdict")},
                    "b": {k: cb.get(k) for k in ("value", "interval", "verdict")},
                    "a_in_b": a_in_b, "b_in_a": b_in_a, "same_verdict": same,
                    "agree": a_in_b and b_in_a and same})
    return out


def _rate_means(metrics: Mapping[str, Any], attack: str) -> dict[tuple, float]:
    key = "uap_evasion_rate" if attack == "paper" else "worst_uap_evasion_rate"
    sums: dict[tuple, list[float]] = {}
    for row in metrics.get("rows", []):
        value = _number(row.get(key))
        if value is not None:
            sums.setdefault((row["dataset"], float(row["lambda"]), float(row["eps"])),
                            []).append(value)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def compare_rates(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """How many seed-averaged rates of each run lie inside the other run's interval."""
    cells = []
    for attack in ("paper", "worst"):
        means_a, means_b = _rate_means(a, attack), _rate_means(b, attack)
        for dataset, entries in (a.get("intervals") or {}).items():
            other = {(e["attack"], float(e["lambda"]), float(e["eps"])): e
                     for e in ((b.get("intervals") or {}).get(dataset) or {}).get("rates", [])}
            for entry in entries.get("rates", []):
                if entry["attack"] != attack:
                    continue
                cell = (dataset, float(entry["lambda"]), float(entry["eps"]))
                twin = other.get((attack, cell[1], cell[2]))
                if twin is None or cell not in means_a or cell not in means_b:
                    continue
                cells.append({"dataset": dataset, "attack": attack, "lambda": cell[1],
                              "eps": cell[2], "a": means_a[cell], "b": means_b[cell],
                              "a_in_b": inside(means_a[cell], (twin["low"], twin["high"])),
                              "b_in_a": inside(means_b[cell], (entry["low"], entry["high"]))})
    return {"cells": cells, "n": len(cells),
            "a_in_b": sum(c["a_in_b"] for c in cells),
            "b_in_a": sum(c["b_in_a"] for c in cells)}


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The largest per-row difference of each quantity in ``ROW_QUANTITIES``, and where."""
    rows_b = {tuple(r[k] for k in ROW_KEY): r for r in b.get("rows", [])}
    out: dict[str, Any] = {"matched_rows": 0}
    largest: dict[str, dict[str, Any]] = {}
    for row in a.get("rows", []):
        key = tuple(row[k] for k in ROW_KEY)
        twin = rows_b.get(key)
        if twin is None:
            continue
        out["matched_rows"] += 1
        for name, get in ROW_QUANTITIES.items():
            va, vb = _number(get(row)), _number(get(twin))
            if va is None or vb is None:
                continue
            diff = abs(va - vb)
            if name not in largest or diff > largest[name]["difference"]:
                largest[name] = {"difference": diff, "a": va, "b": vb,
                                 **dict(zip(ROW_KEY, key, strict=True))}
    out["largest"] = largest
    return out


def compare_runs(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Everything above for runs ``a`` and ``b`` (two metrics.json contents)."""
    claims = compare_claims(a, b)
    return {"a": {"run": a.get("run"), "git_commit": a.get("git_commit"),
                  "config_sha256": a.get("config_sha256")},
            "b": {"run": b.get("run"), "git_commit": b.get("git_commit"),
                  "config_sha256": b.get("config_sha256")},
            "claims": claims, "claims_agree": sum(c["agree"] for c in claims),
            "claims_total": len(claims), "rates": compare_rates(a, b),
            "rows": compare_rows(a, b)}


def _fmt(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.3f}"


def _fmt_interval(interval: Sequence[Any] | None) -> str:
    if not interval or len(interval) != 2:
        return "[–]"
    return f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def format_comparison(result: Mapping[str, Any]) -> str:
    """A plain-text account of :func:`compare_runs`' result."""
    a, b = result["a"]["run"], result["b"]["run"]
    lines = [f"A = {a}, B = {b}", "",
             f"{'dataset':14s} {'attack':6s} {'claim':5s} {'A value [interval] verdict':38s} "
             f"{'B value [interval] verdict':38s} A in B  B in A  same verdict"]
    for c in result["claims"]:
        side = {k: f"{_fmt(c[k]['value'])} {_fmt_interval(c[k]['interval'])} {c[k]['verdict']}"
                for k in ("a", "b")}
        lines.append(f"{c['dataset']:14s} {c['attack']:6s} {c['claim']:5s} {side['a']:38s} "
                     f"{side['b']:38s} {'yes' if c['a_in_b'] else 'NO':7s} "
                     f"{'yes' if c['b_in_a'] else 'NO':7s} {'yes' if c['same_verdict'] else 'NO'}")
    lines.append(f"claim x attack pairs that agree (each value inside the other's interval, "
                 f"same verdict): {result['claims_agree']} of {result['claims_total']}")
    rates = result["rates"]
    lines.append(f"seed-averaged rates inside the other run's interval: A in B {rates['a_in_b']}"
                 f" of {rates['n']}, B in A {rates['b_in_a']} of {rates['n']}")
    rows = result["rows"]
    lines.append(f"largest per-row differences over {rows['matched_rows']} matched rows:")
    for name, big in rows["largest"].items():
        lines.append(f"  {name:28s} {big['difference']:.4f}  (A {big['a']:.4f}, B {big['b']:.4f};"
                     f" lambda={big['lambda']:g} seed={big['seed']} eps={big['eps']:g})")
    return "\n".join(lines)
