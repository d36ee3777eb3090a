# Stage 4: per-model rates over the test split and Jacobian analysis over the analysis set;
# then one aggregation job that writes metrics.json with every row and claims C1-C4.


rule evaluate:
    input:
        checkpoint=f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        uaps=f"{RESULTS}/uaps/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/eval/{{dataset}}/lam{{lam}}_seed{{seed}}.json",
    params:
        settings=as_json(
            {k: v for k, v in config["analysis"].items() if k not in ("claims", "report", "device")}
        ),
        lam=lambda wc: LAMBDAS[wc.lam],
        device=device_of("analysis"),
    group:
        "uap_eval"  # one cluster job per model: its attack, then its evaluation
    log:
        f"{LOGS}/evaluate/{{dataset}}/lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{dataset}}/lam{{lam}}_seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto); profiles/slurm asks SLURM for one
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        "{JACREG} evaluate --dataset {wildcards.dataset:q} --lam {params.lam} "
        "--seed {wildcards.seed} --checkpoint {input.checkpoint:q} --uaps {input.uaps:q} "
        "--data {input.data:q} --settings {params.settings:q} --device {params.device:q} "
        "--threads {threads} --out {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        model_paths("eval", "json"),
    output:
        metrics=f"reports/{RUN}/metrics.json",
        curve=f"reports/{RUN}/evasion_vs_eps.csv",
    params:
        # everything that shapes the metrics; report-only settings stay out of it
        config=as_json(
            {
                **config,
                "analysis": {k: v for k, v in config["analysis"].items() if k != "report"},
            }
        ),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{JACREG} aggregate --evals {input:q} --config {params.config:q} "
        "--out {output.metrics:q} --curve {output.curve:q} "
        "> {log:q} 2>&1"
