# Stage 4: per-model rates over the test split, the PGD contrast and the Jacobian analysis over
# the analysis set; one UAP transfer matrix per (dataset, seed) across all lambdas; then one
# aggregation job that writes metrics.json with every row, claims C1-C4 and the transfer section.


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


def seed_models(kind, ext):
    """The files of every lambda of one (dataset, seed), in the order of config["lambdas"]."""
    return lambda wc: [
        f"{RESULTS}/{kind}/{wc.dataset}/lam{lam}_seed{wc.seed}.{ext}" for lam in LAMBDAS
    ]


TRANSFER_FILES = [f"{RESULTS}/transfer/{d}/seed{s}.json" for d in DATASETS for s in SEEDS]


# The UAP of each lambda's model at the largest eps, applied to every lambda's model of the same
# dataset and seed. Needs all models of a seed at once, so it is not in the per-model group.
rule transfer:
    input:
        checkpoints=seed_models("models", "pt"),
        uaps=seed_models("uaps", "pt"),
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/transfer/{{dataset}}/seed{{seed}}.json",
    params:
        lambdas=as_json(list(LAMBDAS.values())),
        batch_size=config["analysis"]["batch_size"],
        device=device_of("analysis"),
    log:
        f"{LOGS}/transfer/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/transfer/{{dataset}}/seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto)
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        "{JACREG} transfer --dataset {wildcards.dataset:q} --seed {wildcards.seed} "
        "--lambdas {params.lambdas:q} --checkpoints {input.checkpoints:q} "
        "--uaps {input.uaps:q} --data {input.data:q} --batch-size {params.batch_size:q} "
        "--device {params.device:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        evals=model_paths("eval", "json"),
        transfer=TRANSFER_FILES,
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
        "{JACREG} aggregate --evals {input.evals:q} --transfer {input.transfer:q} "
        "--config {params.config:q} "
        "--out {output.metrics:q} --curve {output.curve:q} "
        "> {log:q} 2>&1"
