#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (dependencies + the `dev` extra) and
# lock-constraints.txt with uv, for CPython 3.11 on Linux x86_64, with the sha256 of every file
# PyPI has for each pinned version.
#
#   scripts/update-lock.sh                         # after editing dependencies: pins that still
#                                                  # fit are kept, only what must move moves
#   scripts/update-lock.sh --upgrade-package numpy # move one package to its newest allowed release
#   scripts/update-lock.sh --upgrade               # move everything (torch stays as pinned in
#                                                  # lock-constraints.txt)
#
# Extra arguments go to `uv pip compile`. The same inputs and the same lock give the same file.
# uv: $UV if set, else `uv` on PATH if it is version $UV_VERSION, else uv $UV_VERSION installed
# with pip into ${XDG_CACHE_HOME:-~/.cache}/jacreg/uv-$UV_VERSION (a few MB, once).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9

uv=${UV:-}
if [[ -z $uv ]]; then
    if command -v uv >/dev/null 2>&1 && [[ $(uv --version) == "uv $UV_VERSION"* ]]; then
        uv=uv
    else
        tool="${XDG_CACHE_HOME:-$HOME/.cache}/jacreg/uv-$UV_VERSION"
        if [[ ! -x $tool/bin/uv ]]; then
            echo "installing uv $UV_VERSION into $tool" >&2
            python3 -m venv "$tool"
            "$tool/bin/pip" install -q "uv==$UV_VERSION"
        fi
        uv=$tool/bin/uv
    fi
fi

# --no-config: ignore the caller's uv.toml; --index-url: PyPI, whatever UV_INDEX_URL says (uv
# leaves both out of the header it writes, so the header does not depend on them).
"$uv" pip compile --no-config pyproject.toml --extra dev --constraint lock-constraints.txt \
    --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
    --index-url https://pypi.org/simple --output-file requirements.lock --quiet "$@"
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages); check: git diff --stat requirements.lock" >&2
