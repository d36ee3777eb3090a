#!/usr/bin/env python3
"""Write the README's headline result from the committed reports' metrics.json.

    .venv/bin/python scripts/headline.py            # rewrite the block in README.md
    .venv/bin/python scripts/headline.py --check    # exit 1 when README.md is out of date

The block between ``<!-- headline:start -->`` and ``<!-- headline:end -->`` in README.md holds,
per profile in :data:`PROFILES`: where and from which commit its report was made, clean accuracy
and UAP evasion at the largest eps for the smallest and the largest lambda (means over seeds),
and each claim's value, 95 % interval and verdict with the paper attack and the worst case.
After a profile's report is refreshed (``reports/{run}/metrics.json``), run this script; the
test tests/test_docs.py fails while the README disagrees with the committed files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PROFILES = ("quick", "fashion")
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
COMMAND = ".venv/bin/python scripts/headline.py"
CLAIMS = {"C1": "C1 gain ≥ {t:g}", "C2": "C2 accuracy drop ≤ {t:g}",
          "C3": "C3 Spearman ≥ {t:g}", "C4": "C4 Pearson ≥ {t:g}"}


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}".replace("-", "−")


def claim_cell(claim: dict[str, Any] | None) -> str:
    if claim is None or claim.get("value") is None:
        return "n/a"
    lo, hi = (claim.get("interval") or [None, None])[:2]
    # gains and correlations: 2 decimals; an accuracy drop: 3, or 4 when it is below 0.01
    digits = 2 if claim["id"] != "C2" else (4 if abs(claim["value"]) < 0.01 else 3)
    verdict = claim.get("verdict") or ("holds" if claim.get("holds") else "fails")
    shown = f"**{verdict}**" if verdict != "inconclusive" else verdict
    interval = f" [{fmt(lo, digits)}, {fmt(hi, digits)}]" if lo is not None else ""
    return f"{fmt(claim['value'], digits)}{interval} → {shown}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def profile_block(run: str) -> list[str]:
    metrics = json.loads((REPO / "reports" / run / "metrics.json").read_text())
    env = metrics.get("environment", {})
    rows = metrics["rows"]
    datasets = sorted({r["dataset"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    commit = str(metrics.get("git_commit", "?"))
    dirty = " (recorded as -dirty)" if commit.endswith("-dirty") else ""
    lines = [f"**{run}** ([report](reports/{run}/report.html), "
             f"[metrics.json](reports/{run}/metrics.json)): commit `{commit[:7]}`{dirty}"
             f", {env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} CPUs, "
             f"GPU: {env.get('gpu') or 'none'}, PyTorch {env.get('torch', '?')}; "
             f"{', '.join(datasets)}, seeds {seeds}, {rows[0].get('n_test', '?')} test images.",
             ""]
    lines += ["| dataset | λ | clean accuracy | paper-attack UAP evasion | worst-case UAP "
              "evasion | at ε |", "|---|---|---|---|---|---|"]
    for dataset in datasets:
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        eps = max(r["eps"] for r in ds_rows)
        lams = sorted({r["lambda"] for r in ds_rows})
        for lam in (lams[0], lams[-1]):
            cell = defaultdict(list)
            for r in ds_rows:
                if r["lambda"] == lam and r["eps"] == eps:
                    for key in ("clean_accuracy", "uap_evasion_rate", "worst_uap_evasion_rate"):
                        if r.get(key) is not None:
                            cell[key].append(r[key])
            lines.append(f"| {dataset} | {lam:g} | {fmt(mean(cell['clean_accuracy']))} | "
                         f"{fmt(mean(cell['uap_evasion_rate']))} | "
                         f"{fmt(mean(cell['worst_uap_evasion_rate']))} | {eps:g} |")
    lines += ["", "| dataset | attack | " + " | ".join(
        CLAIMS[c].format(t=next((x["threshold"] for x in metrics["claims"] if x["id"] == c), 0))
        for c in CLAIMS) + " |", "|---|---|" + "---|" * len(CLAIMS)]
    for dataset in datasets:
        for attack in ("paper", "worst"):
            found = {c["id"]: c for c in metrics["claims"]
                     if c["dataset"] == dataset and c.get("attack", "paper") == attack}
            if not found:
                continue
            lines.append(f"| {dataset} | {attack} | "
                         + " | ".join(claim_cell(found.get(c)) for c in CLAIMS) + " |")
    return lines + [""]


def block() -> str:
    lines = [START, ""]
    for run in PROFILES:
        lines += profile_block(run)
    lines.append(END)
    return "\n".join(lines)


def updated(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + block() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"README.md's headline is out of date; regenerate it: {COMMAND}",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
