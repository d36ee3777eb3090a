#!/usr/bin/env bash
# The second-machine check: does a profile reach the same verdicts when floating point differs
# in the last bits? Runs the profile twice, with 1 and with 2 threads per job (which changes the
# last bits of training and of the attacks, as another CPU does): as itself, run name
# {run_name} (nothing to do if that run is complete), and from scratch as {run_name}-threads2;
# then compares them (src/jacreg/compare.py): each claim's value inside the other run's
# interval, the same verdicts, and the largest per-row differences of the paper attack's and
# the worst case's evasion.
#
#   scripts/second-machine-check.sh                        # the quick profile
#   scripts/second-machine-check.sh configs/fashion.yaml   # any profile
#
# Writes reports/{run_name}/, reports/{run_name}-threads2/ and
# reports/{run_name}-second-machine-check.json; exits 1 when a claim's value falls outside the
# other run's interval or a verdict differs (the comparison is printed either way).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/quick.yaml}
shift || true
python=${PYTHON:-.venv/bin/python}
[ -f "$config" ] || { echo "no such config file: $config" >&2; exit 2; }
run=$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["run_name"])' "$config")
for threads in 1 2; do
    name=$run
    [ "$threads" = 1 ] || name=$run-threads$threads
    "$python" -m snakemake --cores all --configfile "$config" --config "run_name=$name" \
        --set-threads train=$threads attack=$threads evaluate=$threads attack_suite=$threads \
        "$@"
done
"$python" -m jacreg.cli compare "reports/$run/metrics.json" "reports/$run-threads2/metrics.json" \
    --out "reports/$run-second-machine-check.json"
