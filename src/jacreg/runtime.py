"""Process set-up shared by every stage: device choice, thread count, seeds and logging."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu`` and ``cuda[:i]`` are taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def set_threads(threads: int | None) -> int:
    """Use exactly the cores the scheduler granted this job (Snakemake's ``threads:``)."""
    if threads:
        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    return torch.get_num_threads()


def cpu_allocation() -> str:
    """Where the CPUs came from, for the log: those this process may run on and, inside a SLURM
    job, the CPUs per task SLURM granted (``SLURM_CPUS_PER_TASK``)."""
    text = f"visible_cpus={len(os.sched_getaffinity(0))}"
    if os.environ.get("SLURM_JOB_ID"):
        text += (f" slurm_job={os.environ['SLURM_JOB_ID']}"
                 f" slurm_cpus_per_task={os.environ.get('SLURM_CPUS_PER_TASK', '?')}")
    return text


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order and sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def configure_backends(device: torch.device) -> None:
    """On the GPU: cuDNN autotuning and TF32 (fast, not bit-exact). The CPU keeps its defaults."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def setup_logging(stage: str) -> logging.Logger:
    """Log lines to stderr, which each Snakemake rule redirects to its ``log:`` file."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
    return logging.getLogger(f"jacreg.{stage}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict[str, Any]:
    """Versions and hardware, recorded in metrics.json and the report's provenance block.

    ``lock`` compares every installed package with requirements.lock
    (:func:`jacreg.lockfile.lock_status`): ``matches_lock`` and the ``differences``.
    """
    import platform

    from jacreg.lockfile import lock_status

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for package in ("torchvision", "snakemake", "matplotlib", "mlxtend", "dvc"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as such
            info[package] = "not installed"
    info["lock"] = lock_status()
    return info


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             disable: bool = False, every: float = 0.1) -> Iterable[T]:
    """Iterate with a progress report: a tqdm bar on a terminal; in a log file (Snakemake's
    ``log:`` redirect) one plain log line per ``every`` of the way, never carriage returns."""
    if disable:
        return iterable
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)
    return _log_progress(iterable, desc, total, every)


def _log_progress(iterable: Iterable[T], desc: str, total: int | None,
                  every: float) -> Iterator[T]:
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    log = logging.getLogger("jacreg.progress")
    started, next_mark, count = time.perf_counter(), every, 0
    for item in iterable:
        yield item
        count += 1
        if total and (count / total >= next_mark - 1e-9 or count == total):
            log.info("%s: %3.0f%% (%d/%d) %.1f s", desc, 100 * count / total, count, total,
                     time.perf_counter() - started)
            while next_mark <= count / total + 1e-9:
                next_mark += every
