"""``python -m benchmarks.markdown RESULTS.json``: the results as a Markdown table (for docs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import fmt_seconds


def render(results: dict) -> str:
    hw = results["hardware"]
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ""
    lines = [
        f"{results['profile']} profile, device `{hw['device']}`: {hw['cpu_model']}, "
        f"{hw['cpu_cores']} cores, torch {hw['torch']} with {hw['torch_threads']} thread(s)"
        f"{gpu}; load average {hw.get('load_average_before')} before, "
        f"{hw.get('load_average_after')} after; {results['total_seconds']:.0f} s; "
        f"{results['created']}.",
        "",
        "| section | measurement | baseline | candidate | baseline time | candidate time "
        "| ratio | target | met | note |",
        "|---|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in results["rows"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['section']} | {r['name']} | {r['baseline']} | {r['candidate']} | "
            f"{fmt_seconds(r['baseline_s']) if r['baseline_s'] is not None else ''} | "
            f"{fmt_seconds(r['candidate_s'])} | {ratio} | {r['target']} | {met} | "
            f"{r['note'].replace('|', '/')} |")
    if results.get("errors"):
        lines += ["", f"Sections that failed: {', '.join(results['errors'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.markdown RESULTS.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
