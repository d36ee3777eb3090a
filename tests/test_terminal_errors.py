"""A failed job's own error message reaches Snakemake's terminal output.

The workflow profile ``profiles/default/config.yaml`` sets ``show-failed-logs: true``;
Snakemake 9 reads that profile by itself on every run in the repository. The test runs the
paper profile as a user would (``snakemake --cores all``, no other argument) in a copy of the
repository without network access: every http(s) request goes to a proxy on 127.0.0.1 where
nothing listens, so no address outside this machine is contacted and the downloads fail at once.
The advice of ``prepare_data`` (which config key to set, or the offline quick profile) must then
be in what the user sees, not only in ``logs/data/prepare_*.log``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import copy_workflow

REPO = Path(__file__).resolve().parents[1]
# what a fresh clone has that the run reads; profiles/ holds the workflow profile under test
COPIED = ["Snakefile", "rules", "schemas", "config.yaml", "configs", "profiles"]
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def offline_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key.lower() not in {"no_proxy", "all_proxy"}}
    proxy = refused_url()
    env.update({var: proxy for var in PROXY_VARS})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def copy_repo(dest: Path) -> Path:
    return copy_workflow(dest, COPIED)


def run_offline(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", *args],
                          cwd=workdir, env=offline_env(), capture_output=True, text=True,
                          timeout=300)
    return proc, time.monotonic() - start


@pytest.mark.workflow
def test_offline_paper_profile_prints_the_data_sources_advice(tmp_path: Path) -> None:
    proc, seconds = run_offline(copy_repo(tmp_path / "clone"))
    terminal = proc.stdout + proc.stderr
    assert proc.returncode != 0, terminal
    assert "Using workflow specific profile profiles/default" in terminal, terminal
    assert "Error in rule prepare_data" in terminal, terminal
    # the job's own message, from its log, in the terminal: the key to set and the way out
    assert "set the config key 'data.sources." in terminal, terminal
    assert "snakemake --cores all --configfile configs/quick.yaml" in terminal, terminal
    # fails fast: no download hangs (the proxy refuses at once)
    assert seconds < 180, f"{seconds:.0f} s"

    # without the workflow profile the terminal only points at the log file: the profile is
    # what brings the message where the user looks
    bare, _ = run_offline(copy_repo(tmp_path / "bare"), "--workflow-profile", "none")
    assert bare.returncode != 0
    assert "check log file(s)" in bare.stdout + bare.stderr
    assert "data.sources" not in bare.stdout + bare.stderr
