"""Tests for :mod:`jacreg.compare` (the second-machine check) and its command line: hand-made
runs whose agreement is known, and the script's run names and thread counts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jacreg.compare import compare_runs, format_comparison, inside

REPO = Path(__file__).resolve().parents[1]


def _run(name: str, c1: float, c1_interval: list, c1_verdict: str, evasion: float) -> dict:
    rows = [{"dataset": "mnist5k", "lambda": lam, "seed": seed, "eps": 0.3,
             "clean_accuracy": 0.95 - lam / 10, "uap_evasion_rate": evasion / (1 + lam),
             "uap_evasion_rate_replicates": [evasion / (1 + lam) + d for d in (0.01, -0.01)],
             "worst_uap_evasion_rate": evasion} for lam in (0.0, 1.0) for seed in (0, 1, 2)]
    claims = [{"id": "C1", "dataset": "mnist5k", "attack": "paper", "value": c1,
               "interval": c1_interval, "verdict": c1_verdict},
              {"id": "C2", "dataset": "mnist5k", "attack": "paper", "value": 0.1,
               "interval": [0.05, 0.15], "verdict": "fails"}]
    intervals = {"mnist5k": {"rates": [
        {"attack": "paper", "lambda": lam, "eps": 0.3, "low": evasion / (1 + lam) - 0.05,
         "high": evasion / (1 + lam) + 0.05} for lam in (0.0, 1.0)]}}
    return {"run": name, "git_commit": "abc", "config_sha256": "0" * 64, "rows": rows,
            "claims": claims, "intervals": intervals}


def test_inside_is_closed_and_false_when_undefined():
    assert inside(1.0, [1.0, 2.0]) and inside(2.0, [1.0, 2.0]) and not inside(2.1, [1.0, 2.0])
    assert not inside(None, [0, 1]) and not inside(0.5, None) and not inside(0.5, [None, 1.0])
    assert not inside(float("nan"), [0, 1])


def test_runs_that_agree_and_runs_that_do_not():
    a = _run("a", 2.0, [1.5, 2.5], "fails", 0.6)
    same = _run("b", 2.2, [1.7, 2.7], "fails", 0.61)
    result = compare_runs(a, same)
    assert result["claims_total"] == 2 and result["claims_agree"] == 2
    c1 = next(c for c in result["claims"] if c["claim"] == "C1")
    assert c1["a_in_b"] and c1["b_in_a"] and c1["same_verdict"] and c1["agree"]
    # B's value is inside A's interval but A's is outside B's: not in agreement
    shifted = _run("b", 2.4, [2.3, 2.9], "fails", 0.6)
    c1 = next(c for c in compare_runs(a, shifted)["claims"] if c["claim"] == "C1")
    assert c1["b_in_a"] and not c1["a_in_b"] and not c1["agree"]
    # both values inside both intervals, but the verdicts differ
    flipped = _run("b", 2.0, [1.5, 4.5], "inconclusive", 0.6)
    c1 = next(c for c in compare_runs(a, flipped)["claims"] if c["claim"] == "C1")
    assert c1["a_in_b"] and c1["b_in_a"] and not c1["same_verdict"] and not c1["agree"]


def test_largest_row_differences_name_their_row_and_rates_are_counted():
    a = _run("a", 2.0, [1.5, 2.5], "fails", 0.6)
    b = copy.deepcopy(a)
    b["run"] = "b"
    target = next(r for r in b["rows"] if r["lambda"] == 1.0 and r["seed"] == 2)
    target["uap_evasion_rate"] += 0.155
    target["uap_evasion_rate_replicates"][0] += 0.2
    b["rows"][0]["worst_uap_evasion_rate"] += 0.04
    rows = compare_runs(a, b)["rows"]
    assert rows["matched_rows"] == 6
    big = rows["largest"]["uap_evasion_rate"]
    assert big["difference"] == pytest.approx(0.155)
    assert (big["lambda"], big["seed"], big["eps"]) == (1.0, 2, 0.3)
    assert rows["largest"]["uap_evasion_rate_replicate0"]["difference"] == pytest.approx(0.2)
    assert rows["largest"]["worst_uap_evasion_rate"]["difference"] == pytest.approx(0.04)
    assert rows["largest"]["clean_accuracy"]["difference"] == 0.0
    # the seed mean of lambda 1 moved by 0.155 / 3 = 0.052 > 0.05: outside A's interval
    rates = compare_runs(a, b)["rates"]
    assert rates["n"] == 2 and rates["b_in_a"] == 1 and rates["a_in_b"] == 2
    text = format_comparison(compare_runs(a, b))
    assert "2 of 2" in text and "uap_evasion_rate" in text and "seed=2" in text


def test_compare_command_writes_json_and_fails_on_a_doctored_pair(tmp_path: Path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run("a", 2.0, [1.5, 2.5], "fails", 0.6)))
    b.write_text(json.dumps(_run("b", 2.0, [1.5, 4.5], "inconclusive", 0.6)))
    out = tmp_path / "cmp.json"
    cmd = [sys.executable, "-m", "jacreg.cli", "compare", str(a), str(b), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # C1's verdicts differ
    assert "1 of 2" in proc.stdout
    assert json.loads(out.read_text())["claims_agree"] == 1
    lenient = subprocess.run([*cmd, "--report-only"], capture_output=True, text=True,
                             timeout=120)
    assert lenient.returncode == 0
    b.write_text(json.dumps(_run("b", 2.1, [1.6, 2.6], "fails", 0.6)))
    agree = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert agree.returncode == 0 and "2 of 2" in agree.stdout


def test_second_machine_script_runs_the_profile_twice_with_1_and_2_threads(tmp_path: Path):
    """The script's two Snakemake calls and its comparison, with a stand-in Python that records
    its arguments and writes the metrics files the real runs would."""
    fake = tmp_path / "python"
    log = tmp_path / "calls.log"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {log}
if [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi
if [ "$2" = "snakemake" ]; then
  run=$(echo "$@" | sed -n 's/.*run_name=\\([^ ]*\\).*/\\1/p')
  mkdir -p reports/$run && cp {tmp_path}/metrics.json reports/$run/metrics.json
  exit 0
fi
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    (tmp_path / "metrics.json").write_text(json.dumps(_run("x", 2.0, [1.5, 2.5], "fails", 0.6)))
    work = tmp_path / "repo"
    (work / "scripts").mkdir(parents=True)
    (work / "configs").mkdir()
    script = (REPO / "scripts" / "second-machine-check.sh").read_text()
    (work / "scripts" / "second-machine-check.sh").write_text(script)
    (work / "configs" / "quick.yaml").write_text("run_name: quick\n")
    env = {**os.environ, "PYTHON": str(fake), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(["bash", "scripts/second-machine-check.sh"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [line for line in log.read_text().splitlines() if " snakemake " in f" {line} "]
    assert len(calls) == 2
    for threads, call in zip((1, 2), calls, strict=True):
        assert "--configfile configs/quick.yaml" in call
        assert call.split("run_name=")[1].split()[0] == ("quick" if threads == 1
                                                         else "quick-threads2")
        assert (f"--set-threads train={threads} attack={threads} evaluate={threads} "
                f"attack_suite={threads}") in call
    result = json.loads((work / "reports" / "quick-second-machine-check.json").read_text())
    assert result["claims_agree"] == result["claims_total"] == 2
    assert "claim x attack pairs that agree" in proc.stdout


@pytest.mark.parametrize("name, committed_json", [
    ("committed_comparison", "reports/quick-second-machine-check.json"),  # 1 vs 2 threads
    ("cross_cpu_comparison", "reports/quick-cross-cpu-check.json"),  # AMD EPYC vs Intel Xeon
])
def test_the_committed_comparison_is_what_the_documented_command_prints(name, committed_json):
    """docs/reproducibility.md's command, run as written on the committed metrics files, gives
    the committed comparison and the output the page shows."""
    from doc_blocks import block, commands

    (line,) = commands(block("docs/reproducibility.md", name, "tests/test_compare.py"))
    argv = line.split()
    assert argv[0] == ".venv/bin/python"
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    committed = json.loads((REPO / committed_json).read_text())
    assert f"{committed['claims_agree']} of {committed['claims_total']}" in proc.stdout
    page = (REPO / "docs/reproducibility.md").read_text()
    for out_line in proc.stdout.splitlines()[2:]:  # the table onwards, as the page shows it
        assert out_line in page, out_line
