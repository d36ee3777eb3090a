"""Performance benchmarks of jacreg: ``python -m benchmarks [--quick] [--out FILE] [--device D]``.

Each section times a piece of the package next to a baseline, in the same process and
interleaved round by round, and reports the median time of each plus the median of the
per-round ratios (docs/performance.md explains every row):

- ``train``: a Jacobian-regularized training step (n_proj = 1) vs a plain step, the CPU thread
  scaling of a step, and the index-batching input path vs plain slicing;
- ``uap``: one SGD-UAP epoch vs one plain forward + input-backward pass over the same images;
- ``jacobian``: the per-sample Jacobian methods side by side, and the whole Jacobian analysis
  of the evaluate stage vs a plain exact reference (K autograd calls, explicit SVDs);
- ``workflow``: Snakemake's DAG build for the paper grid and the start-up cost of one job.
"""
