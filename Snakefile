# jacreg: Jacobian regularization against universal adversarial perturbations
# (Co, Martinez-Rego & Lupu, ICANN 2021). One command reproduces it:
#   snakemake --cores all                                   # paper profile (config.yaml)
#   snakemake --cores all --configfile configs/quick.yaml   # quick profile, CPU, minutes
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/pretrained.smk"
include: "rules/attack.smk"
include: "rules/convergence.smk"  # before evaluate.smk: the aggregate takes its outputs
include: "rules/evaluate.smk"
include: "rules/report.smk"


# Run on the submitting host, never as cluster jobs: downloads need the login node's network,
# importing checkpoints trained elsewhere, aggregation and the report take seconds.
localrules:
    all,
    prepare_data,
    prepare_custom,
    import_model,
    aggregate,
    report,


rule all:
    input:
        f"reports/{RUN}/report.html",
        f"reports/{RUN}/metrics.json",
