# Stage 2 for models trained elsewhere (config models.pretrained; src/jacreg/pretrained.py):
# instead of training, each state-dict file the config names (one per lambda and seed) is read
# weights-only, loaded strictly into the architecture the config names, and written as a jacreg
# checkpoint where a trained model would be. Attacks, analysis, suite and report follow as for
# trained models. The file is an input: replacing it rescores that model.


rule import_model:
    input:
        weights=lambda wc: PRETRAINED[wc.dataset][(wc.lam, int(wc.seed))],
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
    wildcard_constraints:
        dataset=PRETRAINED_DATA,
    params:
        architecture=lambda wc: config["models"]["pretrained"][wc.dataset]["architecture"],
        arch_kwargs=lambda wc: as_json(
            config["models"]["pretrained"][wc.dataset].get("arch_kwargs") or {}
        ),
        lam=lambda wc: LAMBDAS[wc.lam],
    log:
        f"{LOGS}/import/{{dataset}}/lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/import/{{dataset}}/lam{{lam}}_seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{JACREG} import-model --dataset {wildcards.dataset:q} --lam {params.lam} "
        "--seed {wildcards.seed} --source {input.weights:q} --data {input.data:q} "
        "--architecture {params.architecture:q} --arch-kwargs {params.arch_kwargs:q} "
        "--threads {threads} --out {output:q} > {log:q} 2>&1"
