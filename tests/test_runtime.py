"""Tests for :mod:`jacreg.runtime` (progress in log files vs on a terminal) and provenance."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from jacreg import runtime


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_in_a_log_file_writes_plain_lines_per_quarter(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    with caplog.at_level(logging.INFO, logger="jacreg.progress"):
        items = list(runtime.progress(range(391), desc="epoch 1/5", every=0.25))
    assert items == list(range(391))
    lines = [r.getMessage() for r in caplog.records if r.name == "jacreg.progress"]
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == [
        "25%", "50%", "75%", "100%"]
    assert "(98/391)" in lines[0] and "(391/391)" in lines[-1]
    assert not any("\r" in line for line in lines)
    assert sys.stderr.getvalue() == ""  # no tqdm bar went to the log file


def test_progress_on_a_terminal_uses_a_bar_and_disable_passes_through(monkeypatch, caplog):
    stream = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    with caplog.at_level(logging.INFO, logger="jacreg.progress"):
        assert list(runtime.progress(range(5), desc="bar")) == list(range(5))
    assert not [r for r in caplog.records if r.name == "jacreg.progress"]
    data = [1, 2, 3]
    assert runtime.progress(data, desc="x", disable=True) is data


@pytest.mark.parametrize(("n", "every", "expected"), [(3, 1.0, 1), (10, 0.1, 10), (7, 0.5, 2)])
def test_progress_line_count(monkeypatch, caplog, n, every, expected):
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    with caplog.at_level(logging.INFO, logger="jacreg.progress"):
        list(runtime.progress(iter(range(n)), desc="d", total=n, every=every))
    assert len([r for r in caplog.records if r.name == "jacreg.progress"]) == expected


def test_git_commit_is_dirty_only_for_changes_outside_reports(tmp_path: Path) -> None:
    """The run rewrites its committed report files; only other changes make it "-dirty"."""
    from jacreg.cli import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "reports" / "quick").mkdir(parents=True)
    (tmp_path / "reports" / "quick" / "metrics.json").write_text("{}\n")
    (tmp_path / "Snakefile").write_text("# rules\n")
    git("add", ".")
    git("commit", "-qm", "init")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "reports" / "quick" / "metrics.json").unlink()  # as Snakemake does before a job
    (tmp_path / "untracked.txt").write_text("x")
    assert git_commit(tmp_path) == head
    (tmp_path / "Snakefile").write_text("# changed\n")
    assert git_commit(tmp_path) == head + "-dirty"
