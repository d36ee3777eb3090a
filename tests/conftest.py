"""Shared fixtures: one CPU thread, the prepared mnist5k file and a code-running pickle."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from jacreg.data import prepare_dataset


@pytest.fixture(autouse=True)
def _restore_thread_environment():
    """Undo what an in-process ``jacreg`` command leaves behind: ``runtime.set_threads`` sets
    ``OMP_NUM_THREADS``, which every later subprocess (and GNU ``nproc``) would inherit."""
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    threads = torch.get_num_threads()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    """Run a test on one intra-op thread, then restore the previous count.

    Bit-identical CPU results need a fixed thread count, and on a small, shared machine one
    thread avoids the large slowdowns of spinning thread pools under load.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist5k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``prepare_dataset("mnist5k")`` into a temporary folder: (path, tensors)."""
    path = tmp_path_factory.mktemp("prepared") / "mnist5k.pt"
    return path, prepare_dataset("mnist5k", path)


class _RunsCode:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture()
def malicious_file(tmp_path: Path) -> tuple[Path, Path]:
    """``(path, marker)``: a ``torch.save`` file whose unpickling runs ``touch marker``.

    The payload is checkpoint-shaped, so only the weights-only loader can stop it. As a control,
    the fixture first proves the exploit is live by loading it unsafely once.
    """
    marker = tmp_path / "pwned-marker"
    path = tmp_path / "evil.pt"
    payload = {"format": "jacreg-checkpoint-v1", "architecture": "cnn_small",
               "arch_kwargs": {}, "state_dict": {},
               "meta": {"x": _RunsCode(f"touch {shlex.quote(str(marker))}")}}
    torch.save(payload, path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload really runs code
    assert marker.exists(), "control failed: the crafted pickle did not run its command"
    marker.unlink()
    return path, marker


# Modules in the order the two xdist workers should take them (pyproject: -n 2 --dist loadfile):
# the longest first, so that no long module starts last while the other worker idles. Measured
# with `pytest --durations=0` on the project's 2-core machine; modules not named follow in
# their usual order.
LONGEST_FIRST = ("test_workflow.py", "test_slurm.py", "test_dvc.py", "test_faults.py",
                 "test_cifar.py", "test_custom_workflow.py", "test_docs.py",
                 "test_slurm_check.py", "test_terminal_errors.py", "test_download.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module
