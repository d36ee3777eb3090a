# Shared helpers: config validation (before any job), paths, and per-job parameters.
import json
import shlex
import sys
from pathlib import Path

from jacreg.config import ConfigError, load_schema, train_settings, validate_config
from jacreg.config import format_lambda
from jacreg.custom_data import BUILTIN_DATASETS
from jacreg.preflight import PreflightError, pretrained_files, preflight
from jacreg.sources import parse_source
from jacreg.user_code import config_architectures, config_code_dirs

try:
    validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# A local data source must exist before any job runs; checked only for datasets that still
# need preparing (a colleague who pulled data/prepared/ with DVC needs no source).
for _dataset, _source in ((config.get("data") or {}).get("sources") or {}).items():
    if _dataset in config["datasets"] and not Path(f"data/prepared/{_dataset}.pt").exists():
        try:
            parse_source(_dataset, _source)
        except ValueError as error:
            raise WorkflowError(str(error)) from None

# Your own data, model code and checkpoints (docs/custom.md), checked before any job: a bad
# .npz or image folder (when it still needs preparing), a missing code folder or module, a
# missing checkpoint file.
try:
    preflight(config)
except PreflightError as error:
    raise WorkflowError(str(error)) from None

# The interpreter running Snakemake runs every job too: no PATH or activated venv needed.
# Checkpoints may import only the architectures the config names, from its code folders.
JACREG = f"{shlex.quote(sys.executable)} -m jacreg.cli" + "".join(
    [f" --allow-architecture {shlex.quote(a)}" for a in config_architectures(config)]
    + [f" --code-dir {shlex.quote(d)}" for d in config_code_dirs(config)]
)
RUN = config["run_name"]
DATASETS = config["datasets"]
LAMBDAS = {format_lambda(lam): float(lam) for lam in config["lambdas"]}
SEEDS = [int(s) for s in config["seeds"]]
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"{RESULTS}/benchmarks"
# Your own datasets (data.custom) and models trained elsewhere (models.pretrained): which rule
# makes which dataset's files. A regex that matches nothing ("(?!)") leaves a rule unused.
CUSTOM = (config.get("data") or {}).get("custom") or {}
PRETRAINED = pretrained_files(config)


def one_of(names):
    """A wildcard regex matching exactly these dataset names."""
    return "|".join(names) or "(?!)"


BUILTIN_DATA = one_of([d for d in DATASETS if d in BUILTIN_DATASETS])
CUSTOM_DATA = one_of([d for d in DATASETS if d in CUSTOM])
TRAINED_DATA = one_of([d for d in DATASETS if d not in PRETRAINED])
PRETRAINED_DATA = one_of([d for d in DATASETS if d in PRETRAINED])


wildcard_constraints:
    dataset="|".join(DATASETS),
    lam="|".join(map(lambda s: s.replace(".", r"\."), LAMBDAS)),
    seed=r"\d+",


MODEL_KEYS = [(d, lam, s) for d in DATASETS for lam in LAMBDAS for s in SEEDS]


def model_paths(kind, ext):
    """One path per trained model: results/{run}/{kind}/{dataset}/lam{lam}_seed{seed}.{ext}."""
    return [f"{RESULTS}/{kind}/{d}/lam{lam}_seed{s}.{ext}" for d, lam, s in MODEL_KEYS]


def as_json(value):
    return json.dumps(value, sort_keys=True)


def device_of(section):
    return config[section].get("device", "auto")


include: "cluster.smk"
