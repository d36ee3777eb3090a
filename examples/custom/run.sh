#!/usr/bin/env sh
# The worked example in one command, from the repository root (docs/custom.md):
#   examples/custom/run.sh [more snakemake options]
# Writes the 5,000 bundled MNIST digits as data/examples/digits.npz (offline, seconds; unchanged
# files are not rewritten), then runs the whole pipeline on them with the example's own model.
set -eu
cd "$(dirname "$0")/../.."
if [ -n "${VIRTUAL_ENV:-}" ]; then py="$VIRTUAL_ENV/bin/python"; else py=.venv/bin/python; fi
[ -x "$py" ] || py=python3
"$py" examples/custom/make_digits.py
exec "$py" -m snakemake --cores all --configfile examples/custom/config.yaml "$@"
