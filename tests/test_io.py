"""Tests for :mod:`jacreg.io`: atomic writes, JSON round-trips and weights-only loading."""

from __future__ import annotations

import json

import pytest
import torch

from jacreg.io import atomic_open, load_torch, read_json, save_torch, write_json


def test_atomic_open_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_open(path, "w") as handle:
        handle.write("new")
        assert path.read_text() == "old"  # nothing visible until the body finishes
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_open_keeps_the_old_file_when_the_body_raises(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"good data")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as handle:
            handle.write(b"half-written")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"good data"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no stray temp file


def test_atomic_open_failure_without_an_old_file_leaves_nothing(tmp_path):
    path = tmp_path / "deep" / "new.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "w") as handle:
            handle.write("{")
            raise KeyboardInterrupt
    assert not path.exists()
    assert list((tmp_path / "deep").iterdir()) == []


def test_write_json_round_trip_sorted_and_newline_terminated(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": -3e-7}, "c": "x"}
    path = tmp_path / "sub" / "m.json"
    write_json(obj, path)
    assert read_json(path) == obj
    text = path.read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert json.loads(text) == obj
    write_json([1], path)  # overwrite
    assert read_json(path) == [1]


def test_save_and_load_torch_round_trip(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "meta": {"s": "x", "l": [1.5]}}
    path = tmp_path / "t.pt"
    save_torch(obj, path)
    loaded = load_torch(path)
    assert torch.equal(loaded["w"], obj["w"])
    assert loaded["n"] == 3 and loaded["meta"] == {"s": "x", "l": [1.5]}


def test_load_torch_refuses_a_code_running_pickle(malicious_file):
    path, marker = malicious_file
    with pytest.raises(ValueError, match="refused to load"):
        load_torch(path)
    assert not marker.exists()


def test_load_torch_refuses_a_non_torch_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="refused to load"):
        load_torch(path)
