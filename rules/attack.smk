# Stage 3: SGD-UAPs against each trained model, one per eps of that dataset's grid. Reads the
# checkpoint only: attacking never retrains.


rule attack:
    input:
        checkpoint=f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/uaps/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
    params:
        settings=as_json(
            {k: v for k, v in config["attack"].items() if k not in ("device", "select_images")}
        ),
        eps=lambda wc: as_json(config["epsilons"][wc.dataset]),
        lam=lambda wc: LAMBDAS[wc.lam],
        device=device_of("attack"),
    group:
        "uap_eval"  # one cluster job per model: its attack, then its evaluation
    log:
        f"{LOGS}/attack/{{dataset}}/lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/attack/{{dataset}}/lam{{lam}}_seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto); profiles/slurm asks SLURM for one
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{JACREG} attack --dataset {wildcards.dataset:q} --lam {params.lam} "
        "--seed {wildcards.seed} --checkpoint {input.checkpoint:q} --data {input.data:q} "
        "--eps {params.eps:q} --settings {params.settings:q} --device {params.device:q} "
        "--threads {threads} --out {output:q} > {log:q} 2>&1"
