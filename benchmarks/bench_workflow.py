"""The workflow: Snakemake's DAG build for the paper grid and the cost of starting one job."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Context, Row, median

SECTION = "workflow"
REPO = Path(__file__).resolve().parents[1]
DAG_TARGET_S = 5.0
TRIVIAL_SNAKEFILE = 'rule trivial:\n    shell:\n        "true"\n'


def _timed(cmd: list[str], cwd: Path, repeats: int) -> tuple[list[float], str, int]:
    """Wall times of ``repeats`` runs of ``cmd`` (a subprocess each); last output and status."""
    times, output, status = [], "", 0
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        output, status = proc.stdout + proc.stderr, proc.returncode
    return times, output, status


def _row(name: str, what: str, times: list[float], status: int, output: str,
         target_s: float | None = None, note: str = "", baseline: str = "",
         baseline_times: list[float] | None = None) -> Row:
    seconds = median(times)
    base = median(baseline_times) if baseline_times else None
    failed = status != 0
    if failed:
        note = f"FAILED (exit {status}): {output.strip().splitlines()[-1] if output else ''}"
    return Row(section=SECTION, name=name, baseline=baseline, candidate=what,
               baseline_s=base, candidate_s=seconds,
               ratio=None if base is None else seconds / base,
               target="" if target_s is None else f"< {target_s:g} s",
               met=None if target_s is None else (not failed and seconds < target_s),
               note=note, details={"samples_s": [round(t, 4) for t in times],
                                   "exit_status": status,
                                   **({"baseline_samples_s": [round(t, 4) for t in
                                                              baseline_times]}
                                      if baseline_times else {})})


def _startup_diagnostics(ctx: Context, python: str) -> list[Row]:
    """Snakemake's own start-up, and the SLURM plugin's import-time ``scontrol`` call."""
    rows = []
    repeats = 3
    ctx.log("  snakemake start-up (--version)")
    version_times, out, st = _timed([python, "-m", "snakemake", "--version"], REPO, repeats)
    plugins = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                     if (d.metadata["Name"] or "").lower().startswith("snakemake-executor-plugin"))
    row = _row("snakemake start-up alone (--version)", "python -m snakemake --version",
               version_times, st, out, note=f"executor plugins: {', '.join(plugins) or 'none'}")
    row.details["executor_plugins"] = plugins
    rows.append(row)
    scontrol = shutil.which("scontrol")
    if scontrol and any("slurm" in name.lower() for name in plugins):
        # the SLURM executor plugin runs `scontrol show config` when it is imported, i.e. in
        # every snakemake command; without a reachable controller that call waits ~9 s
        sc_times, out, st = _timed([scontrol, "show", "config"], REPO, 1)
        rows.append(Row(section=SECTION, name="scontrol show config (SLURM plugin import)",
                        baseline="", candidate="scontrol show config", baseline_s=None,
                        candidate_s=median(sc_times), ratio=None,
                        note=("controller reachable" if st == 0 else
                              f"exit {st}: {out.strip().splitlines()[-1] if out else ''}"),
                        details={"samples_s": [round(t, 4) for t in sc_times],
                                 "exit_status": st}))

    return rows


def run(ctx: Context) -> list[Row]:
    repeats = 1 if ctx.quick else 3
    python = sys.executable
    rows = []

    ctx.log("  snakemake -n (paper profile, config.yaml)")
    cmd = [python, "-m", "snakemake", "-n", "--nolock", "--cores", "1"]
    times, output, status = _timed(cmd, REPO, repeats)
    total = re.search(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    jobs = int(total.group(1)) if total else None
    row = _row("DAG build, paper grid (snakemake -n)", "python -m snakemake -n --nolock",
               times, status, output, target_s=DAG_TARGET_S,
               note=f"{jobs} jobs in the plan" if jobs else "")
    row.details["jobs"] = jobs
    rows.append(row)

    if not ctx.quick:
        rows += _startup_diagnostics(ctx, python)

    ctx.log("  interpreter and CLI start-up")
    base_times, _, _ = _timed([python, "-c", "pass"], REPO, repeats + 2)
    torch_times, out, st = _timed([python, "-c", "import torch"], REPO, repeats + 2)
    rows.append(_row("start-up: import torch", "python -c 'import torch'", torch_times, st, out,
                     baseline="python -c pass", baseline_times=base_times))
    cli_times, out, st = _timed([python, "-m", "jacreg.cli", "--help"], REPO, repeats + 2)
    rows.append(_row("start-up: one jacreg job's CLI", "python -m jacreg.cli --help", cli_times,
                     st, out, baseline="python -c pass", baseline_times=base_times))

    ctx.log("  one trivial Snakemake job")
    job_times, output, status = [], "", 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="jacreg-bench-") as tmp:
            Path(tmp, "Snakefile").write_text(TRIVIAL_SNAKEFILE, encoding="utf-8")
            times, output, status = _timed([python, "-m", "snakemake", "--cores", "1"],
                                           Path(tmp), 1)
            job_times += times
    rows.append(_row("one trivial job (shell: true)", "python -m snakemake --cores 1",
                     job_times, status, output, baseline="python -c pass",
                     baseline_times=base_times,
                     note="whole Snakemake run of a one-rule Snakefile in a temp dir"))
    return rows
