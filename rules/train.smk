# Stage 2: one training job per (dataset, lambda, seed). Its params hold only that dataset's
# training settings and its lambda, so changing eps or analysis settings never retrains.


rule train:
    input:
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
    wildcard_constraints:
        dataset=TRAINED_DATA,  # models.pretrained datasets: rules/pretrained.smk
    params:
        settings=lambda wc: as_json(train_settings(config, wc.dataset)),
        lam=lambda wc: LAMBDAS[wc.lam],
        device=device_of("train"),
    log:
        f"{LOGS}/train/{{dataset}}/lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{dataset}}/lam{{lam}}_seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto); profiles/slurm asks SLURM for one
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "{JACREG} train --dataset {wildcards.dataset:q} --lam {params.lam} "
        "--seed {wildcards.seed} --data {input.data:q} --settings {params.settings:q} "
        "--device {params.device:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
