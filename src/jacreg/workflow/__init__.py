"""Snakemake and SLURM plumbing: nothing here computes anything the paper is about.

``rules/cluster.smk`` calls :mod:`jacreg.workflow.cluster_hooks`, which uses
:mod:`jacreg.workflow.slurm_check` (what a SLURM partition can give, jobs that will never start)
and :mod:`jacreg.workflow.workdir_lock` (which Snakemake processes are alive in the working
directory; stale Snakemake locks). These modules import only the standard library, each other
and (at run time) Snakemake; no module outside this subpackage imports them.
"""
