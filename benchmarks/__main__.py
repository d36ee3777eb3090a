"""``python -m benchmarks [--quick] [--out FILE] [--device auto|cpu|cuda]``: time, print, save."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import bench_jacobian, bench_suite, bench_train, bench_uap, bench_workflow
from benchmarks.common import Context, Row, hardware, load_average, table

SECTIONS = {"train": bench_train.run, "uap": bench_uap.run, "suite": bench_suite.run,
            "jacobian": bench_jacobian.run, "workflow": bench_workflow.run}
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds (under a minute on 2 CPU cores)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON results file (default: {DEFAULT_OUT})")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on the CPU, what every workflow job "
                             "gets with threads: 1, the train section also times 1 vs all "
                             "cores; torch's default, one per core, with CUDA)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("--device cuda: CUDA is not available", file=sys.stderr)
            return 2
    threads = args.threads if args.threads else (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        # what the pipeline's train/attack stages set on a GPU (jacreg.runtime)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print(f"unknown sections: {unknown}; known: {list(SECTIONS)}", file=sys.stderr)
        return 2

    ctx = Context(device=device, quick=args.quick, repeats=8 if args.quick else 25,
                  slow_repeats=1 if args.quick else 3,
                  log=lambda msg: print(msg, file=sys.stderr, flush=True))
    info = hardware(device)
    print(f"jacreg benchmarks ({'quick' if args.quick else 'full'} profile) on {device}: "
          f"{info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']} with "
          f"{info['torch_threads']} threads" + (f", GPU {info['gpu']}" if info["gpu"] else ""),
          file=sys.stderr, flush=True)
    load_before = load_average()
    started = time.perf_counter()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    section_seconds: dict[str, float] = {}
    for name in names:
        ctx.log(f"[{name}]")
        t0 = time.perf_counter()
        try:
            rows += SECTIONS[name](ctx)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            errors[name] = traceback.format_exc()
            ctx.log(f"section {name} failed:\n{errors[name]}")
        section_seconds[name] = round(time.perf_counter() - t0, 2)
    total = time.perf_counter() - started

    results = {
        "schema": "jacreg-benchmarks-v1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks", *(argv if argv is not None
                                                              else sys.argv[1:])]),
        "profile": "quick" if args.quick else "full",
        "hardware": {**info, "load_average_before": load_before,
                     "load_average_after": load_average()},
        "total_seconds": round(total, 2),
        "section_seconds": section_seconds,
        "rows": [r.as_dict() for r in rows],
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(rows))
    targets = [r for r in rows if r.met is not None]
    print(f"\n{sum(bool(r.met) for r in targets)}/{len(targets)} targets met; "
          f"{total:.0f} s in all; load average {load_before} -> {load_average()}; "
          f"results: {args.out}")
    if errors:
        print(f"sections that failed: {', '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
