"""Training: the JR step vs a plain step, CPU thread scaling, and the input path."""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import Context, Row, interleaved, median, ratio_row
from jacreg.jacobian import jacobian_penalty
from jacreg.models import build_model
from jacreg.train import index_batches, random_crop_flip, train_step

SECTION = "train"
JR_TARGET = 2.0
LAMBDA = 0.1


def naive_jr_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
                  yb: torch.Tensor, generator: torch.Generator) -> None:
    """The step as first written: the same penalty, then a plain ``loss.backward()``.

    That backward also fills ``xb.grad``, an input gradient nobody reads (train_step avoids it).
    """
    xb = xb.clone().requires_grad_(True)
    logits = model(xb)
    loss = F.cross_entropy(logits, yb) + LAMBDA * jacobian_penalty(xb, logits, n_proj=1,
                                                                   generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _step_configs(ctx: Context) -> list[tuple[str, int, int, int, int]]:
    """(architecture, channels, image size, batch, rounds) of the JR-vs-plain comparisons."""
    configs = [("cnn_small", 1, 28, 64, ctx.repeats)]
    if not ctx.quick:
        configs.append(("cnn", 1, 28, 128, ctx.repeats))
    if ctx.cuda:
        configs.append(("resnet18", 3, 32, 128, ctx.repeats))
    elif not ctx.quick:
        configs.append(("resnet18", 3, 32, 4, max(5, ctx.repeats // 3)))  # tiny batch on CPU
    return configs


def _step_cases(arch: str, channels: int, size: int, batch: int, device: torch.device):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=10, image_size=size)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, channels, size, size), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    projection = torch.Generator().manual_seed(1)
    return {
        "plain step": lambda: train_step(model, optimizer, x, y, 0.0, params=params),
        "JR step": lambda: train_step(model, optimizer, x, y, LAMBDA, 1, projection, params),
        "JR step, naive backward": lambda: naive_jr_step(model, optimizer, x, y, projection),
    }


def jr_vs_plain(ctx: Context) -> list[Row]:
    rows = []
    for arch, channels, size, batch, rounds in _step_configs(ctx):
        ctx.log(f"  train step {arch} {channels}x{size}x{size} batch {batch} ({rounds} rounds)")
        cases = _step_cases(arch, channels, size, batch, ctx.device)
        samples = interleaved(cases, ctx.device, rounds, warmup=2)
        label = f"{arch} {size}x{size} b{batch}"
        rows.append(ratio_row(SECTION, f"JR step (n_proj=1) vs plain, {label}", samples,
                              "JR step", "plain step", target=JR_TARGET))
        rows.append(ratio_row(SECTION, f"naive JR step vs plain, {label}", samples,
                              "JR step, naive backward", "plain step",
                              note="before: loss.backward() also computed the input gradient"))
        rows.append(ratio_row(SECTION, f"JR step vs naive JR step, {label}", samples,
                              "JR step", "JR step, naive backward",
                              note="effect of backward(inputs=params) in train_step"))
    return rows


def first_layer_input_gradient(ctx: Context, step_rows: list[Row]) -> list[Row]:
    """The one kernel a JR step adds that a plain step never runs: the input gradient of the
    first convolution (one input channel on MNIST). Timed alone, oneDNN vs the native kernel."""
    if ctx.cuda:
        return []
    jr_step_s = {r.name.split(", ", 1)[1]: r.candidate_s for r in step_rows
                 if r.name.startswith("JR step (n_proj=1) vs plain")}
    rows = []
    for arch, channels, size, batch, _ in _step_configs(ctx):
        if channels != 1:
            continue
        conv = build_model(arch, in_channels=1, image_size=size).features[0]
        weight = conv.weight.detach()
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((batch, 1, size, size), generator=gen)
        grad_out = torch.randn((batch, weight.shape[0], size - 4, size - 4), generator=gen)

        def backward_data(w: torch.Tensor = weight, xx: torch.Tensor = x,
                          g: torch.Tensor = grad_out) -> torch.Tensor:
            return torch.ops.aten.convolution_backward(
                g, xx, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [True, False, False])[0]

        def native() -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a oneDNN TF32 note about Intel GPUs
                with torch.backends.mkldnn.flags(enabled=False):
                    return backward_data()

        def forward(w: torch.Tensor = weight, xx: torch.Tensor = x) -> torch.Tensor:
            return F.conv2d(xx, w)

        label = f"{arch} {size}x{size} b{batch}"
        cases = {"oneDNN (in use)": backward_data, "native kernel": native,
                 "first-layer forward": forward}
        samples = interleaved(cases, ctx.device, ctx.repeats, warmup=2)
        used = median(samples["oneDNN (in use)"])
        step = jr_step_s.get(label)
        share = used / step if step else None
        diff = float((native() - backward_data()).abs().max())
        note = (f"oneDNN backward-data {used * 1e3:.1f} ms"
                + (f" = {share:.0%} of the JR step" if share else "")
                + f", {used / median(samples['first-layer forward']):.1f}x the layer's forward;"
                  f" native differs by up to {diff:.1e} (rounding), so it is not used")
        rows.append(ratio_row(SECTION, f"first-layer input gradient, {label}", samples,
                              "native kernel", "oneDNN (in use)", note=note,
                              details={"share_of_jr_step": share, "max_abs_diff": diff}))
    return rows


def thread_scaling(ctx: Context) -> list[Row]:
    """A JR step with 1 torch thread vs all of them: is one job per core the better use?"""
    if ctx.cuda or ctx.quick:
        return []
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not threads or threads < 2:
        return []
    default = torch.get_num_threads()
    rows = []
    for arch, batch in (("cnn_small", 64), ("cnn", 128)):
        ctx.log(f"  thread scaling {arch} batch {batch}: 1 vs {threads} threads")
        base = _step_cases(arch, 1, 28, batch, ctx.device)["JR step"]

        def with_threads(n: int, fn=base):
            def run() -> None:
                torch.set_num_threads(n)
                try:
                    fn()
                finally:
                    torch.set_num_threads(default)
            return run

        one, many = "JR step, 1 thread", f"JR step, {threads} threads"
        samples = interleaved({one: with_threads(1), many: with_threads(threads)}, ctx.device,
                              max(5, ctx.repeats // 2), warmup=2)
        row = ratio_row(SECTION, f"thread scaling, {arch} b{batch}", samples, many, one)
        speedup = 1.0 / row.ratio if row.ratio else float("nan")
        row.details["speedup"] = speedup
        row.details["throughput_of_one_thread_jobs_vs_one_multithread_job"] = threads / speedup
        row.note = (f"speedup {speedup:.2f}x on {threads} threads: {threads} one-thread jobs do "
                    f"{threads / speedup:.2f}x the work of one {threads}-thread job")
        rows.append(row)
    return rows


def input_path(ctx: Context) -> list[Row]:
    """Samples per second of train.py's index-batching vs plain slicing and a DataLoader."""
    n = 2048 if ctx.quick else 4000
    shapes = [("28x28", 1, 28, 64, False)]
    if not ctx.quick:
        shapes.append(("3x32x32 + crop/flip", 3, 32, 128, True))
    rows: list[Row] = []
    for label, channels, size, batch, augment in shapes:
        rows += _input_path_one(ctx, label, n, channels, size, batch, augment)
    return rows


def _input_path_one(ctx: Context, label: str, n: int, channels: int, size: int, batch: int,
                    augment: bool) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    x_cpu = torch.rand((n, channels, size, size), generator=gen)
    y_cpu = torch.randint(0, 10, (n,), generator=gen)
    x, y = x_cpu.to(ctx.device), y_cpu.to(ctx.device)
    order_gen = torch.Generator().manual_seed(1)
    aug_gen = torch.Generator().manual_seed(2)

    def finish(xb: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(xb, aug_gen) if augment else xb

    def index_batching() -> None:
        for xb, _yb in index_batches(x, y, batch, order_gen):
            finish(xb)

    def advanced_indexing() -> None:
        # what index_batches did before: always x[idx] (index_select on the CPU now)
        order = torch.randperm(n, generator=order_gen).to(x.device)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            finish(x[idx])
            y[idx]

    def slicing() -> None:
        for start in range(0, n, batch):
            finish(x[start:start + batch].clone())
            y[start:start + batch].clone()

    loader = DataLoader(TensorDataset(x_cpu, y_cpu), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(3), num_workers=0)

    def data_loader() -> None:
        for xb, yb in loader:
            finish(xb.to(ctx.device))
            yb.to(ctx.device)

    cases = {"index_batches (train.py)": index_batching,
             "x[idx] gather": advanced_indexing,
             "contiguous slices, copied": slicing,
             "DataLoader(shuffle=True)": data_loader}
    ctx.log(f"  input path {label}, {n} samples, batch {batch}")
    samples = interleaved(cases, ctx.device, ctx.repeats, warmup=1)
    per_s = {k: n / median(v) for k, v in samples.items()}
    details = {"samples_per_s": {k: round(v) for k, v in per_s.items()}, "n": n,
               "batch": batch}
    return [
        ratio_row(SECTION, f"input path {label}: index-batching vs slicing", samples,
                  "index_batches (train.py)", "contiguous slices, copied",
                  note=f"{per_s['index_batches (train.py)']:,.0f} samples/s", details=details),
        ratio_row(SECTION, f"input path {label}: take_rows vs x[idx]", samples,
                  "index_batches (train.py)", "x[idx] gather",
                  note="index_select on the CPU, x[idx] elsewhere (uap.take_rows)",
                  details=details),
        ratio_row(SECTION, f"input path {label}: index-batching vs DataLoader", samples,
                  "index_batches (train.py)", "DataLoader(shuffle=True)",
                  note=f"DataLoader {per_s['DataLoader(shuffle=True)']:,.0f} samples/s",
                  details=details),
    ]


def run(ctx: Context) -> list[Row]:
    steps = jr_vs_plain(ctx)
    return steps + first_layer_input_gradient(ctx, steps) + thread_scaling(ctx) + input_path(ctx)
