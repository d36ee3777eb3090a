# Stage 5: figures and one self-contained HTML report (also usable by `snakemake --report`).

FIGURES = [
    "evasion_vs_eps",
    "clean_accuracy_vs_lambda",
    "jacobian_norms_vs_lambda",
    "bounds_vs_lambda",
    "uap_images",
    "shared_metric_heatmap",
    "metric_vs_evasion",
    "uap_vs_pgd",
    "uap_transfer",
]


rule report:
    input:
        metrics=f"reports/{RUN}/metrics.json",
        evals=model_paths("eval", "json"),
        uaps=model_paths("uaps", "pt"),
    output:
        html=f"reports/{RUN}/report.html",
        figures=[
            report(f"reports/{RUN}/figures/{name}.png", category="Figures")
            for name in FIGURES
        ],
    params:
        dpi=config["analysis"].get("report", {}).get("dpi", 110),
        benchmarks=BENCH,
        figures_dir=f"reports/{RUN}/figures",
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{JACREG} report --metrics {input.metrics:q} --evals {input.evals:q} "
        "--uaps {input.uaps:q} --benchmarks-dir {params.benchmarks:q} --html {output.html:q} "
        "--figures-dir {params.figures_dir:q} --dpi {params.dpi} > {log:q} 2>&1"
