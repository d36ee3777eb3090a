# Stage 5 (optional): attack convergence. With analysis.convergence.enabled (configs/
# convergence.yaml), each model's strong attack runs again with `factor` times the restarts and
# epochs, and the gap between that long run and the shipped worst case goes into metrics.json
# and the report (src/jacreg/convergence.py). Reads the checkpoints and the suite: it never
# retrains or re-attacks.

CONVERGENCE_SETTINGS = config["analysis"].get("convergence") or {}
CONVERGENCE_SEEDS = CONVERGENCE_SETTINGS.get("seeds") or SEEDS  # null: every seed
CONVERGENCE_FILES = (
    [
        f"{RESULTS}/convergence/{d}/lam{lam}_seed{s}.json"
        for d, lam, s in MODEL_KEYS
        if s in CONVERGENCE_SEEDS
    ]
    if CONVERGENCE_SETTINGS.get("enabled", False)
    else []
)


rule convergence:
    input:
        checkpoint=f"{RESULTS}/models/{{dataset}}/lam{{lam}}_seed{{seed}}.pt",
        suite=f"{RESULTS}/suite/{{dataset}}/seed{{seed}}.json",
        data="data/prepared/{dataset}.pt",
    output:
        f"{RESULTS}/convergence/{{dataset}}/lam{{lam}}_seed{{seed}}.json",
    params:
        settings=as_json(
            {k: v for k, v in config["attack"].items() if k not in ("device", "select_images")}
        ),
        factor=CONVERGENCE_SETTINGS.get("factor", 10),
        lam=lambda wc: LAMBDAS[wc.lam],
        device=device_of("attack"),
    log:
        f"{LOGS}/convergence/{{dataset}}/lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/convergence/{{dataset}}/lam{{lam}}_seed{{seed}}.tsv"
    threads: 1
    # uses the GPU when present (device: auto); a long run is about factor^2 strong attacks
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "{JACREG} convergence --lam {params.lam} --checkpoint {input.checkpoint:q} "
        "--suite {input.suite:q} --data {input.data:q} --settings {params.settings:q} "
        "--factor {params.factor:q} --device {params.device:q} --threads {threads} "
        "--out {output:q} > {log:q} 2>&1"
