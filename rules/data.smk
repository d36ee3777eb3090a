# Stage 1: prepare each dataset once into data/prepared/{dataset}.pt (uint8 tensors + digest).


rule prepare_data:
    output:
        "data/prepared/{dataset}.pt",
    log:
        "logs/data/prepare_{dataset}.log",
    benchmark:
        f"{BENCH}/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{JACREG} prepare --dataset {wildcards.dataset:q} --out {output:q} "
        "--raw-dir data/raw --threads {threads} > {log:q} 2>&1"
