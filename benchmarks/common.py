"""Timing, hardware description and result rows shared by the benchmark sections."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from jacreg.runtime import cpu_model


@dataclass
class Context:
    """What every section needs: the device, the profile and the repeat counts."""

    device: torch.device
    quick: bool
    repeats: int  # timed rounds for the fast measurements (each a few ms to 1 s)
    slow_repeats: int  # timed rounds for the slow ones (several seconds each)
    log: Callable[[str], None] = print

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Row:
    """One comparison: ``candidate`` against ``baseline``; ratio = candidate / baseline time."""

    section: str
    name: str
    baseline: str
    candidate: str
    baseline_s: float | None
    candidate_s: float | None
    ratio: float | None
    target: str = ""  # e.g. "<= 2.0" (ratio) or "< 5 s" (candidate time); empty: no target
    met: bool | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call; on CUDA the queue is drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def interleaved(cases: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time every case ``repeats`` times, round by round, rotating the order within a round.

    Interleaving puts the cases under the same machine load (this runs on shared machines), so
    the per-round ratios are fairer than comparing medians taken minutes apart.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_once(cases[name], device))
    return samples


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(samples: dict[str, list[float]], candidate: str, baseline: str) -> float:
    """Median over rounds of candidate time / baseline time measured in the same round."""
    return median([c / b for c, b in zip(samples[candidate], samples[baseline], strict=True)])


def ratio_row(section: str, name: str, samples: dict[str, list[float]], candidate: str,
              baseline: str, target: float | None = None, note: str = "",
              details: dict[str, Any] | None = None) -> Row:
    """A Row comparing two interleaved cases; ``target``: the largest acceptable ratio."""
    ratio = paired_ratio(samples, candidate, baseline)
    return Row(section=section, name=name, baseline=baseline, candidate=candidate,
               baseline_s=median(samples[baseline]), candidate_s=median(samples[candidate]),
               ratio=ratio, target="" if target is None else f"<= {target:g}",
               met=None if target is None else ratio <= target, note=note,
               details={"rounds": len(samples[candidate]),
                        "samples_s": {k: [round(v, 6) for v in vals]
                                      for k, vals in samples.items()},
                        **(details or {})})


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine the numbers come from."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def table(rows: list[Row]) -> str:
    """A plain-text table of the rows, one line each."""
    head = ("section", "measurement", "baseline", "candidate", "base", "cand", "ratio",
            "target", "met", "note")
    lines = []
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.section, r.name, r.baseline, r.candidate, fmt_seconds(r.baseline_s),
                      fmt_seconds(r.candidate_s), "-" if r.ratio is None else f"{r.ratio:.3f}",
                      r.target, met, r.note if len(r.note) <= 100 else r.note[:97] + "..."))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
            for line in lines]
    return "\n".join(out)
