# Stage 4: per-model rates over the test split, the PGD contrast and the Jacobian analysis over
# the analysis set; the attack suite per (dataset, seed) across all lambdas (worst-case UAP,
# transfer); then one aggregation job that writes metrics.json with every row, the sanity
# checks, claims C1-C4 on both attacks with bootstrap intervals, and the transfer section.


rule evaluate:
    input:
        checkpoint=f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        uaps=f"{RESULTS}/uaps/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/eval/{{dataset}}/lam{{lam}}_seed{{seed}}.json",
    params:
        # what evaluate uses: the claims, the bootstrap, convergence and the report do not
        # change a model's rates, so changing them reruns no evaluation
        settings=as_json(
            {
                k: v
                for k, v in config["analysis"].items()
                if k not in ("claims", "report", "device", "bootstrap", "convergence")
            }
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


SUITE_FILES = [f"{RESULTS}/suite/{d}/seed{s}.json" for d in DATASETS for s in SEEDS]
OUTCOME_FILES = [f"{RESULTS}/suite/{d}/seed{s}.outcomes.pt" for d in DATASETS for s in SEEDS]


# The attack suite of one (dataset, seed): each model against its paper and strong UAPs and the
# paper UAPs of every other lambda; the worst member is chosen on the attack split and scored on
# the test split (src/jacreg/attack_suite.py). Needs all models of a seed at once, so it is not
# in the per-model group.
rule attack_suite:
    input:
        checkpoints=seed_models("models", "pt"),
        uaps=seed_models("uaps", "pt"),
        data="data/prepared/{dataset}.pt",
    output:
        summary=f"{RESULTS}/suite/{{dataset}}/seed{{seed}}.json",
        outcomes=f"{RESULTS}/suite/{{dataset}}/seed{{seed}}.outcomes.pt",
    params:
        lambdas=as_json(list(LAMBDAS.values())),
        attack_images=config["attack"].get("select_images") or config["attack"]["n_images"],
        settings=as_json(
            {k: v for k, v in config["attack"].items() if k not in ("device", "select_images")}
        ),
        batch_size=config["analysis"]["batch_size"],
        device=device_of("analysis"),
    log:
        f"{LOGS}/suite/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/suite/{{dataset}}/seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto)
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        "{JACREG} suite --dataset {wildcards.dataset:q} --seed {wildcards.seed} "
        "--lambdas {params.lambdas:q} --checkpoints {input.checkpoints:q} "
        "--uaps {input.uaps:q} --data {input.data:q} --attack-images {params.attack_images:q} "
        "--batch-size {params.batch_size:q} --settings {params.settings:q} "
        "--device {params.device:q} --threads {threads} "
        "--out {output.summary:q} --outcomes {output.outcomes:q} > {log:q} 2>&1"


rule aggregate:
    input:
        evals=model_paths("eval", "json"),
        suites=SUITE_FILES,
        outcomes=OUTCOME_FILES,
        convergence=CONVERGENCE_FILES,
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
        "{JACREG} aggregate --evals {input.evals:q} --suites {input.suites:q} "
        "--outcomes {input.outcomes:q} --convergence {input.convergence:q} "
        "--config {params.config:q} "
        "--out {output.metrics:q} --curve {output.curve:q} "
        "> {log:q} 2>&1"
