"""Tests for :mod:`jacreg.report` on a small synthetic run (1 dataset, 2 lambdas, 2 seeds)."""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from jacreg.figures import _correlations  # noqa: E402
from jacreg.report import (  # noqa: E402
    FIGURES,
    _read_benchmarks,
    paper_differences,
    render_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAMBDAS = [0.0, 0.5]
SEEDS = [0, 1]
EPS = [0.1, 0.3]
CLEAN = {(0.0, 0): 0.95, (0.0, 1): 0.97, (0.5, 0): 0.90, (0.5, 1): 0.94}
RUN_NAME = "quick<script>alert(1)</script>"
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def _row(lam: float, seed: int, eps: float) -> dict[str, Any]:
    jac = 10.0 / (1.0 + 10 * lam) + seed
    evasion = min(1.0, eps * (2.0 - lam) + 0.05 * seed)
    v_norm = eps * 28.0
    return {
        "dataset": "mnist5k", "lambda": lam, "seed": seed, "eps": eps,
        "clean_accuracy": CLEAN[(lam, seed)], "clean_error": 1.0 - CLEAN[(lam, seed)],
        "uap_evasion_rate": evasion, "uap_fooling_rate": evasion + 0.01,
        "random_evasion_rate": eps / 10, "random_fooling_rate": eps / 9,
        "jacobian_frobenius": jac, "jacobian_spectral_mean": jac / 2,
        "stacked_jacobian_spectral": jac * 3, "stacked_jacobian_frobenius": jac * 5,
        "shared_metric_mean": 0.3 - 0.2 * lam + 0.01 * seed, "shared_cosine_mean": 0.1,
        "uap_l2_norm": v_norm, "linearized_logit_change": jac * v_norm,
        "spectral_bound": jac * 3 * v_norm, "frobenius_bound": jac * 5 * v_norm,
        "actual_logit_change": jac * v_norm * 0.9,
        "pgd_evasion_rate": min(1.0, 2 * eps + 0.1 * seed + 0.05 * lam),
        "uap_evasion_rate_pgd_inputs": evasion, "pgd_n_inputs": 50, "pgd_steps": 20,
        "n_test": 1000,
        "checkpoint": f"models/lam{lam}_seed{seed}.pt", "uap": f"uaps/lam{lam}_seed{seed}.pt",
        "strong_uap_evasion_rate": min(1.0, evasion + 0.02),
        "transfer_uap_evasion_rate": evasion / 2, "transfer_uap_source": "transfer:0",
        "worst_uap_evasion_rate": min(1.0, evasion + 0.02), "worst_uap_member": "strong",
        "member_evasion_rates": {"paper": evasion, "strong": min(1.0, evasion + 0.02)},
    }


CLAIMS = [
    {"id": "C1", "dataset": "mnist5k", "statement": "Jacobian regularization lowers UAP evasion",
     "value": 0.123456, "threshold": 0.0, "holds": True,
     "detail": {"lambda": 0.5, "eps": 0.3, "evasion_floor": 0.001,
                "gains": {"lambda=0.5,eps=0.1": 1.5, "lambda=0.5,eps=0.3": 0.123456},
                "per_seed": {"values": {"0": 0.1, "1": 0.15}, "mean": 0.125, "std": 0.0354},
                "gain_at_accuracy_preserving_lambda": {
                    "lambda": 0.5, "accuracy_drop": 0.04, "max_accuracy_drop": 0.05,
                    "per_eps": {"0.1": 1.5, "0.3": 0.123456}}}},
    {"id": "C2", "dataset": "mnist5k", "statement": "Clean accuracy is kept <within 2%>",
     "value": 0.04, "threshold": 0.02, "holds": False,
     "detail": {"lambda": 0.5, "accuracy_drop_per_lambda": {"0": 0.0, "0.5": 0.04},
                "accuracy_drop_std_per_lambda": {"0": 0.0, "0.5": 0.0141},
                "per_seed": {"values": {"0": 0.05, "1": 0.03}, "mean": 0.04,
                             "std": 0.0141}}},
    {"id": "C3", "dataset": "mnist5k", "statement": "Bounds hold side by side", "value": None,
     "threshold": 0.0, "holds": True,
     "detail": {"measure": "spectral", "bound_violations": 0}},
    {"id": "C4", "dataset": "mnist5k", "statement": "Metric tracks evasion", "value": 0.8,
     "threshold": 0.5, "holds": False, "detail": {"measure": "shared_metric", "spearman": 0.8}},
]


VERDICTS = {"C1": "holds", "C2": "fails", "C3": "inconclusive", "C4": "fails"}
for _claim in CLAIMS:
    _claim.update(attack="paper", verdict=VERDICTS[_claim["id"]], interval=[0.111, 0.999])
CLAIMS += [dict(c, attack="worst", value=0.654321, verdict="inconclusive", interval=None)
           for c in CLAIMS]
INTERVALS = {"mnist5k": {
    "rates": [{"attack": a, "lambda": lam, "eps": e, "low": 0.0123, "high": 0.9876}
              for a in ("paper", "worst") for lam in LAMBDAS for e in EPS],
    "clean_accuracy": [{"lambda": lam, "low": 0.5, "high": 0.99} for lam in LAMBDAS],
    "gains": [{"attack": a, "lambda": 0.5, "eps": e, "low": 1.25, "high": 2.5}
              for a in ("paper", "worst") for e in EPS]}}
CHECKS = [{"dataset": "mnist5k", "lambda": lam, "seed": seed, "checks": [
    {"name": "monotone_in_eps", "passed": True, "where": []},
    {"name": "transfer_below_strong", "passed": lam == 0.0,
     "where": [] if lam == 0.0 else ["eps=0.3: transfer:0 0.5000 > strong 0.3000 (+0.0284)"]},
    {"name": "above_random", "passed": True, "where": []},
    {"name": "large_budget", "passed": True, "where": []}]}
    for lam in LAMBDAS for seed in SEEDS]


CONFIG = {
    "run_name": "quick", "datasets": ["mnist5k"], "seeds": SEEDS, "lambdas": LAMBDAS,
    "epsilons": {"mnist5k": EPS},
    "train": {"architecture": "cnn_small", "epochs": 3, "batch_size": 64, "optimizer": "adam",
              "lr": 0.001, "n_proj": 1, "device": "auto"},
    "attack": {"n_images": 4000, "epochs": 5, "batch_size": 128, "beta": 12.0,
               "step_fraction": 0.8, "target_class": None, "device": "auto"},
    "analysis": {"n_inputs": 200, "n_pairs": 500, "pairs_per_class_pair": 10, "batch_size": 250,
                 "device": "auto", "pgd_inputs": 50, "pgd_steps": 20,
                 "claims": {"min_robustness_gain": 4.0, "max_accuracy_drop": 0.05,
                            "min_correlation": 0.5}},
}
TRANSFER = {"mnist5k": {
    "eps": 0.3, "lambdas": LAMBDAS, "seeds": SEEDS,
    "matrix_mean": [[0.6, 0.2], [0.5, 0.3]], "matrix_std": [[0.05, 0.01], [0.02, 0.03]],
    "per_seed": {"0": [[0.55, 0.19], [0.48, 0.27]], "1": [[0.65, 0.21], [0.52, 0.33]]}}}


@pytest.fixture()
def run(tmp_path: Path) -> dict[str, Any]:
    rows = [_row(lam, seed, eps) for lam in LAMBDAS for seed in SEEDS for eps in EPS]
    metrics = {
        "run": RUN_NAME, "git_commit": "abc123", "config_sha256": "f" * 64,
        "environment": {"lock": {"lock_file": "requirements.lock", "matches_lock": False,
                                 "differences": [{"name": "numpy", "locked": "2.4.6",
                                                  "installed": "2.5.0"}]},
                        "python": "3.11", "torch": "2.x", "threads": "4",
                        "interop_threads": "2"},
        "config": CONFIG, "rows": rows, "claims": CLAIMS, "transfer": TRANSFER,
        "intervals": INTERVALS, "checks": CHECKS,
    }
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(metrics))

    names = [str(k) for k in range(10)]
    eval_paths, uap_paths = [], []
    for lam in LAMBDAS:
        for seed in SEEDS:
            matrix: list[list[float | None]] = [
                [0.1 * (i == j) + 0.01 * (i + j) + lam for j in range(10)] for i in range(10)
            ]
            matrix[0][1] = None  # NaN in the file
            ev = {"dataset": "mnist5k", "lambda": lam, "seed": seed, "class_names": names,
                  "class_pair_matrix": matrix, "shared_metric_mean": 0.2,
                  "rows": [r for r in rows if r["lambda"] == lam and r["seed"] == seed]}
            path = tmp_path / "eval" / f"lam{lam}_seed{seed}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(ev))
            eval_paths.append(path)
            eps_t = torch.tensor(EPS)
            uaps = (torch.rand(len(EPS), 1, 28, 28) * 2 - 1) * eps_t.view(-1, 1, 1, 1)
            upath = tmp_path / "uaps" / f"lam{lam}_seed{seed}.pt"
            upath.parent.mkdir(exist_ok=True)
            torch.save({"eps": eps_t, "uaps": uaps, "dataset": "mnist5k", "lambda": lam,
                        "seed": seed}, upath)
            uap_paths.append(upath)

    bench = tmp_path / "results" / "quick" / "benchmarks"
    bench_files = {
        bench / "train" / "mnist5k" / "lam0.0_seed0.tsv": "3.0",
        bench / "train" / "mnist5k" / "lam0.5_seed0.tsv": "5.0",
        bench / "aggregate.tsv": "1.25",
        bench / "attack" / "mnist5k" / "lam0.0_seed0.tsv": "NA",
    }
    for path, seconds in bench_files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{BENCH_HEADER}\n{seconds}\t0:00:03\t100\t200\t-\t-\t-\t-\t-\t1.0\n")
    return {"metrics": metrics_path, "evals": eval_paths, "uaps": uap_paths,
            "bench": list(bench_files), "html": tmp_path / "out" / "report.html",
            "figs": tmp_path / "out" / "figures"}


def _render(run: dict[str, Any]) -> tuple[list[Path], str]:
    written = render_report(run["metrics"], run["evals"], run["uaps"], run["bench"],
                            run["html"], run["figs"], dpi=60)
    return written, Path(run["html"]).read_text(encoding="utf-8")


def test_figures_are_valid_pngs(run: dict[str, Any]) -> None:
    written, _ = _render(run)
    expected = [name for name, _, _ in FIGURES]
    assert len(expected) == 9
    assert {"uap_vs_pgd.png", "uap_transfer.png"} <= set(expected)
    assert [p.name for p in written] == expected
    for path in written:
        assert path.parent == run["figs"]
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(path)
        assert image.shape[0] > 50 and image.shape[1] > 50
    assert not list(Path(run["figs"]).glob("*.tmp")), "temporary files left behind"


def test_html_embeds_every_figure_and_no_external_resources(run: dict[str, Any]) -> None:
    _, page = _render(run)
    assert page.count('<img src="data:image/png;base64,') == 9
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"https?:", page)
    for heading in ("Claims", "Results", "Differences from the paper", "Provenance",
                    "Method notes"):
        assert f"<h2>{heading}</h2>" in page
    order = [page.index(f"<h2>{h}</h2>") for h in ("Claims", "Results", "Provenance")]
    assert order == sorted(order)


def test_claims_show_both_attacks_with_intervals_and_verdicts(run: dict[str, Any]) -> None:
    _, page = _render(run)
    for claim in CLAIMS[:4]:
        match = re.search(rf"<tr><td>{claim['id']}</td>.*?</tr>", page)
        assert match, claim["id"]
        row = match.group(0)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        # paper: value, interval, verdict; then worst: value, interval, verdict
        assert cells[5] == "[0.111, 0.999]" and cells[6] == VERDICTS[claim["id"]]
        assert cells[7] == "0.654" and cells[8] == "–" and cells[9] == "inconclusive"
        css = {"holds": "ok", "fails": "bad", "inconclusive": "maybe"}[VERDICTS[claim["id"]]]
        assert f'<td class="{css}">{VERDICTS[claim["id"]]}</td>' in row
    assert "0.123" in page  # 3 significant digits
    assert "&lt;within 2%&gt;" in page
    assert "bound_violations=0" in page


def test_sanity_checks_table_flags_with_where(run: dict[str, Any]) -> None:
    _, page = _render(run)
    section = page[page.index("<h3>Attack sanity checks</h3>"):page.index("<h2>Figures</h2>")]
    assert "2 flag(s) in 4 models" in section
    assert section.count('<td class="flag">✗ eps=0.3: transfer:0 0.5000 &gt; strong') == 2
    assert section.count('<td class="ok">✓</td>') == 4 * 4 - 2


def test_results_show_paper_and_worst_case_with_intervals(run: dict[str, Any]) -> None:
    _, page = _render(run)
    results = page[page.index("<h2>Results</h2>"):page.index("<h3>Attack suite</h3>")]
    assert "worst-case UAP evasion ε=0.3" in results
    assert results.count("[0.0123, 0.988]") == 2 * 2 * 2  # 2 attacks x 2 lambdas x 2 eps
    assert results.count("[0.5, 0.99]") == 2  # clean accuracy per lambda
    suite = page[page.index("<h3>Attack suite</h3>"):page.index("<h3>Attack sanity checks</h3>")]
    assert suite.count("<tr><td>mnist5k</td>") == 2 * 2  # every (lambda, eps)
    assert "<td>0.5</td><td>0.3</td>" in suite and "strong ×2" in suite
    gains = page[page.index("Robustness gain and accuracy cost"):page.index("<h2>Results</h2>")]
    assert "worst-case gain ε=0.3" in gains and gains.count("[1.25, 2.5]") == 4


def test_results_table_means(run: dict[str, Any]) -> None:
    _, page = _render(run)
    results = page[page.index("<h2>Results</h2>"):page.index("<h2>Figures</h2>")]
    assert "0.960 ± 0.014" in results  # lambda 0: mean(0.95, 0.97), sample std
    assert "0.920 ± 0.028" in results  # lambda 0.5
    assert "UAP evasion ε=0.1" in results and "UAP evasion ε=0.3" in results
    # lambda=0, eps=0.3: evasion = 0.6 and 0.65
    assert "0.625 ± 0.035" in results


def test_stage_times(run: dict[str, Any]) -> None:
    _, page = _render(run)
    prov = page[page.index("<h2>Provenance</h2>"):]
    assert re.search(r"<tr><td>train</td><td>2</td><td>8\.0</td><td>5\.0</td></tr>", prov)
    assert re.search(r"<tr><td>aggregate</td><td>1</td><td>1\.2", prov)
    assert re.search(r"<tr><td>attack</td><td>1</td><td>–</td>", prov)  # NA is tolerated
    assert re.search(r"<tr><td>total</td><td>4</td><td>9\.2", prov)
    assert "interop_threads" in prov and "f" * 64 in prov
    # drift from the lock: one line in the table, then every differing package
    assert "differs from the lock (requirements.lock) in 1 package: numpy 2.4.6→2.5.0" in prov
    assert "<td>numpy</td><td>2.4.6</td><td>2.5.0</td>" in prov


def test_run_name_is_escaped(run: dict[str, Any]) -> None:
    _, page = _render(run)
    assert "<script>" not in page
    assert "quick&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_read_benchmarks_stage_names(tmp_path: Path) -> None:
    paths = {
        tmp_path / "benchmarks" / "prepare" / "mnist5k.tsv": "2\t",
        tmp_path / "benchmarks" / "aggregate.tsv": "-\t",
        tmp_path / "benchmarks" / "train" / "a" / "b.tsv": "1.5\t",
    }
    for path, text in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{BENCH_HEADER}\n{text}\n")
    stages = _read_benchmarks(list(paths))
    assert list(stages) == ["prepare", "train", "aggregate"]
    assert stages["prepare"] == [2.0] and stages["train"] == [1.5]
    assert stages["aggregate"][0] != stages["aggregate"][0]  # NaN


def test_correlations() -> None:
    pearson, spearman = _correlations([1, 2, 3, 4], [1, 4, 9, 100])
    assert spearman == pytest.approx(1.0)
    assert 0 < pearson < 1
    pearson, spearman = _correlations([1, 2, 2, 3], [3, 2, 2, 1])
    assert pearson == pytest.approx(-1.0) and spearman == pytest.approx(-1.0)
    assert _correlations([1.0], [2.0])[0] != _correlations([1.0], [2.0])[0]  # NaN


def test_rgb_uaps_and_missing_evals(run: dict[str, Any]) -> None:
    for path in run["uaps"]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved["uaps"] = (torch.rand(len(EPS), 3, 8, 8) * 2 - 1) * saved["eps"].view(-1, 1, 1, 1)
        torch.save(saved, path)
    written = render_report(run["metrics"], [], run["uaps"], [], run["html"], run["figs"], dpi=50)
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)
    page = Path(run["html"]).read_text(encoding="utf-8")
    assert re.search(r"<tr><td>total</td><td>0</td><td>0\.0", page)


def test_results_table_pgd_columns(run: dict[str, Any]) -> None:
    _, page = _render(run)
    results = page[page.index("<h2>Results</h2>"):page.index("<h2>Figures</h2>")]
    assert "PGD evasion ε=0.1 (first 50)" in results
    assert "PGD evasion ε=0.3 (first 50)" in results
    # lambda=0, eps=0.3: PGD 0.6 and 0.7; lambda=0.5, eps=0.1: 0.225 and 0.325
    assert "0.650 ± 0.071" in results
    assert "0.275 ± 0.071" in results
    header = re.search(r"<tr><th>.*?</tr>", results).group(0)
    assert header.index("UAP evasion ε=0.3") < header.index("PGD evasion ε=0.1") < header.index(
        "random evasion")


def test_claims_show_seed_spread_and_accuracy_preserving_lambda(run: dict[str, Any]) -> None:
    _, page = _render(run)
    claims = page[page.index("<h2>Claims</h2>"):page.index("<h2>Results</h2>")]
    c1 = re.search(r"<tr><td>C1</td>.*?</tr>", claims).group(0)
    assert "0.125 ± 0.035 (2 seeds)" in c1
    c2 = re.search(r"<tr><td>C2</td>.*?</tr>", claims).group(0)
    assert "0.04 ± 0.014 (2 seeds)" in c2
    assert re.search(r"<tr><td>C3</td>(<td>[^<]*</td>){3}<td>–</td>", claims)  # no seed spread
    assert "C1 at the accuracy-preserving λ" in claims
    assert "is λ = 0.5 (drop 0.04)" in claims and "ε=0.1: 1.50×, ε=0.3: 0.12×" in claims
    # the gains table: accuracy drop mean ± std, UAP gains per eps, PGD gains per eps
    # (PGD means at eps 0.1: lambda 0 -> 0.25, lambda 0.5 -> 0.275: gain 0.909;
    #  at eps 0.3: 0.65 and 0.675: gain 0.963)
    row = re.search(r"<tr><td>0.5</td>.*?</tr>", claims).group(0)
    assert ("<td>0.040 ± 0.014</td><td>1.5 [1.25, 2.5]</td><td>0.123 [1.25, 2.5]</td>"
            "<td>1.5 [1.25, 2.5]</td><td>0.123 [1.25, 2.5]</td><td>0.909</td><td>0.963</td>"
            "<td>C1 (max gain), accuracy-preserving</td>") in row
    assert "PGD gain ε=0.1" in claims and "PGD gain ε=0.3" in claims


def test_differences_from_the_paper_follow_the_config(run: dict[str, Any]) -> None:
    _, page = _render(run)
    section = page[page.index("<h2>Differences from the paper</h2>"):
                   page.index("<h2>Provenance</h2>")]
    rows = json.loads(Path(run["metrics"]).read_text())["rows"]
    table = {r[0]: r for r in paper_differences(CONFIG, rows)}
    for setting in ("data splits (mnist5k)", "architecture (mnist5k)", "training (mnist5k)",
                    "λ grid", "ε grid (mnist5k, L∞, inputs in [0, 1])",
                    "SGD-UAP (Shafahi et al., 2020)", "analysis set",
                    "shared-perturbation metric", "claim thresholds",
                    "PGD contrast (Madry et al., 2018)", "UAP transfer matrix"):
        assert setting in table, setting
        assert all(table[setting]), setting
        assert html_escape(table[setting][1]) in section, setting
    assert table["λ grid"][1] == "{0, 0.5}"
    assert table["ε grid (mnist5k, L∞, inputs in [0, 1])"][1] == "{0.1, 0.3}"
    assert "conv16-5" in table["architecture (mnist5k)"][1]
    assert "3 epochs, adam lr 0.001" in table["training (mnist5k)"][1]
    assert "from 1 random projection(s) per sample" in table["training (mnist5k)"][1]
    assert "5 epochs over 4,000 attack-split images" in table["SGD-UAP (Shafahi et al., 2020)"][1]
    assert "β = 12, sign step 0.8·ε, untargeted" in table["SGD-UAP (Shafahi et al., 2020)"][1]
    assert "first 50 test inputs, 20 steps of 2.5·ε/20" in table[
        "PGD contrast (Madry et al., 2018)"][1]
    assert "C2 accuracy drop ≤ 0.05" in table["claim thresholds"][1]
    assert "4,000 train / 1,000 test" in table["data splits (mnist5k)"][1]
    assert "quick profile only" in table["data splits (mnist5k)"][2]
    assert "our derivation" in table["shared-perturbation metric"][2]
    # generated, not fixed text: another config gives other entries
    other = json.loads(json.dumps(CONFIG))
    other["datasets"] = ["cifar10"]
    other["epsilons"] = {"cifar10": [4 / 255, 8 / 255]}
    other["attack"]["beta"] = 6.0
    other["analysis"]["pgd_inputs"] = 0
    other["train"]["overrides"] = {"cifar10": {"architecture": "resnet18", "augment": True,
                                               "n_proj": -1}}
    changed = {r[0]: r for r in paper_differences(other, [])}
    assert changed["ε grid (cifar10, L∞, inputs in [0, 1])"][1] == "{4/255, 8/255}"
    assert "β = 6" in changed["SGD-UAP (Shafahi et al., 2020)"][1]
    assert "not run" in changed["PGD contrast (Madry et al., 2018)"][1]
    assert "ResNet-18" in changed["architecture (cifar10)"][1]
    assert "crop + flip" in changed["training (cifar10)"][1]
    assert "Jacobian penalty exact" in changed["training (cifar10)"][1]
    assert "10,000 held-out" in changed["data splits (cifar10)"][1]
    assert "data splits (mnist5k)" not in changed


def test_custom_dataset_split_row_names_its_source_and_attack_split(
        run: dict[str, Any]) -> None:
    """Your own dataset's "data splits" row: the format and path (or torchvision class) from
    data.custom.<name>, and the attack split as the evaluations recorded the prepared file
    (held-out block, the file's own x_attack, or the training images), else as configured."""
    npz = {"format": "npz", "path": "data/examples/digits.npz"}
    config = dict(json.loads(json.dumps(CONFIG).replace("mnist5k", "digits")),
                  data={"custom": {"digits": npz}})
    rows = [{"dataset": "digits", "n_test": 1000}]

    def split_row(entry: dict[str, Any], splits: dict[str, Any] | None = None) -> list[str]:
        config["data"]["custom"]["digits"] = entry
        table = {r[0]: r for r in paper_differences(
            config, rows, {"digits": splits} if splits else None)}
        return table["data splits (digits)"]

    held = split_row(npz, {"train": 3200, "attack": 800, "test": 1000,
                           "attack_split": "held_out"})
    assert held[1] == (
        "digits (data.custom.digits): npz data/examples/digits.npz; 800 training images held "
        "out as the attack split (never trained on), 3,200 left for training; UAPs crafted on "
        "the first 4,000 attack-split images; rates over 1,000 test inputs")
    assert held[2] == "your own dataset: not the paper's data"
    own = split_row(npz, {"train": 4000, "attack": 500, "test": 1000, "attack_split": "own"})
    assert "attack split: the file's own x_attack (500 images)" in own[1]
    folder = split_row({"format": "folder", "path": "imgs"},
                       {"train": 90, "attack": 30, "test": 30, "attack_split": "own"})
    assert "folder imgs; attack split: the folder's own attack/ images (30 images)" in folder[1]
    same = split_row(dict(npz, attack_holdout=0),
                     {"train": 4000, "attack": 4000, "test": 1000, "attack_split": "train"})
    assert "no attack split held out (attack_holdout: 0)" in same[1]
    # evaluations written before the record: as the configuration sets it
    assert "1,500 training images held out" in split_row(dict(npz, attack_holdout=1500))[1]
    assert "x_attack if given, else min(10,000, a fifth" in split_row(npz)[1]
    tv = split_row({"format": "torchvision", "class": "EMNIST", "kwargs": {"split": "digits"}})
    assert "torchvision.datasets.EMNIST(split='digits')" in tv[1]

    # the report itself: the record comes from the evaluation files
    for path in [run["metrics"], *run["evals"]]:
        data = json.loads(Path(path).read_text().replace("mnist5k", "digits"))
        if path == run["metrics"]:
            data["config"]["data"] = {"custom": {"digits": npz}}
        else:
            data["splits"] = {"train": 3200, "attack": 800, "test": 1000,
                              "attack_split": "held_out"}
        Path(path).write_text(json.dumps(data))
    _, page = _render(run)
    section = page[page.index("<h2>Differences from the paper</h2>"):
                   page.index("<h2>Provenance</h2>")]
    assert html_escape(held[1]) in section


def test_run_without_pgd_or_transfer_still_renders(run: dict[str, Any]) -> None:
    metrics = json.loads(Path(run["metrics"]).read_text())
    del metrics["transfer"]
    for row in metrics["rows"]:
        for key in ("pgd_evasion_rate", "uap_evasion_rate_pgd_inputs", "pgd_n_inputs"):
            row.pop(key)
    Path(run["metrics"]).write_text(json.dumps(metrics))
    written, page = _render(run)
    assert len(written) == 9
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)
    assert "PGD evasion" not in page[page.index("<h2>Results</h2>"):]


def test_workflow_wall_time_is_the_span_of_the_jobs(tmp_path: Path) -> None:
    import os

    from jacreg.report import _job_span

    paths = []
    # (job end time, job seconds): the first starts at 1000 - 50 = 950, the last ends at 1300
    for i, (end, seconds) in enumerate([(1000.0, 50.0), (1300.0, 200.0), (1200.0, 10.0)]):
        path = tmp_path / f"job{i}.tsv"
        path.write_text(f"{BENCH_HEADER}\n{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t0\t1\n")
        os.utime(path, (end, end))
        paths.append(path)
    assert _job_span(paths) == pytest.approx(1300.0 - 950.0)
    late = tmp_path / "aggregate.tsv"  # rerun an hour later: not part of the span
    late.write_text(f"{BENCH_HEADER}\n2.0\t0:00:02\t1\t1\t1\t1\t0\t0\t0\t1\n")
    os.utime(late, (5000.0, 5000.0))
    assert _job_span([*paths, late]) == pytest.approx(1300.0 - 950.0)
    assert _job_span([]) is None


def test_markup_in_dataset_names_and_notes_is_escaped(run: dict[str, Any]) -> None:
    """The template autoescapes every value: a dataset name or a profile's note with markup in
    it shows as text, never as markup (the page has no script and no injected tag)."""
    evil = "mnist<script>alert(2)</script>"
    metrics = json.loads(Path(run["metrics"]).read_text())
    for entry in (*metrics["rows"], *metrics["claims"], *metrics["checks"]):
        entry["dataset"] = evil
    metrics["intervals"] = {evil: metrics["intervals"]["mnist5k"]}
    metrics["transfer"] = {evil: metrics["transfer"]["mnist5k"]}
    metrics["config"]["datasets"] = [evil]
    metrics["config"]["epsilons"] = {evil: EPS}
    metrics["config"]["notes"] = {"<b>a setting</b>": "a note <script>alert(3)</script> & 'so'"}
    Path(run["metrics"]).write_text(json.dumps(metrics))
    _, page = _render(run)
    assert "<script" not in page and "<b>a setting" not in page
    escaped = "mnist&lt;script&gt;alert(2)&lt;/script&gt;"
    assert f"<tr><td>C1</td><td>{escaped}</td>" in page  # claims
    assert f"<tr><td>{escaped}</td><td>0.5</td>" in page  # results, suite, checks
    assert f"<td>data splits ({escaped})</td>" in page  # differences from the paper
    assert f"<b>{escaped} — C1 at the accuracy-preserving λ</b>" in page
    assert ("<td>&lt;b&gt;a setting&lt;/b&gt;</td>"
            "<td>a note &lt;script&gt;alert(3)&lt;/script&gt; &amp; &#39;so&#39;</td>") in page


def test_the_template_ships_with_the_package() -> None:
    """Every file the report renders from is package data (pyproject.toml), so a wheel install
    renders the same page as this checkout."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    from jacreg import report

    root = Path(report.__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["jacreg"]
    files = sorted(p.relative_to(root / "src" / "jacreg").as_posix()
                   for p in report.TEMPLATE_DIR.iterdir())
    assert report.TEMPLATE in [Path(f).name for f in files]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


def test_convergence_section_shows_every_gap_and_the_largest(run: dict[str, Any]) -> None:
    _, page = _render(run)
    assert "Attack convergence" not in page  # no long runs in this run
    from jacreg.convergence import summarize
    results = [{"dataset": "mnist5k", "lambda": lam, "seed": 0, "factor": 10,
                "per_eps": [{"eps": 0.3, "shipped_worst_member": "strong#1",
                             "shipped_worst_evasion_rate": 0.5,
                             "long_run_evasion_rate": 0.5 + gap, "gap": gap}]}
               for lam, gap in ((0.0, 0.012), (1.0, -0.004))]
    metrics = json.loads(Path(run["metrics"]).read_text())
    metrics["convergence"] = summarize(results)
    Path(run["metrics"]).write_text(json.dumps(metrics))
    _, page = _render(run)
    assert "<h3>Attack convergence</h3>" in page
    assert "10× the restarts and epochs; largest gap +0.012 (λ = 0, seed 0, ε = 0.3)" in page
    assert "+0.012" in page and "-0.004" in page and "strong#1" in page
