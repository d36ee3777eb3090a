"""Tests for :mod:`jacreg.runtime`: progress reporting in log files vs on a terminal."""

from __future__ import annotations

import io
import logging
import sys

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
