# Runs that survive a cluster and the death of Snakemake itself (jacreg.workflow.cluster_hooks):
# - now, while the Snakefile is read (main process only): claim the working directory and remove
#   the .snakemake/locks a killed Snakemake left, if no other Snakemake is alive here;
# - onstart, with --executor slurm only: check every cluster job's request against its
#   partition before the first sbatch (stop with the fix, or JACREG_SLURM_CAP=1 to lower it),
#   cancel jobs a dead Snakemake left for this run's outputs, report jobs stuck in PENDING
#   (JACREG_SLURM_STUCK_AFTER seconds), make a second SIGTERM cancel like Ctrl-C.
from jacreg.workflow import cluster_hooks

cluster_hooks.on_parse(workflow)


onstart:
    cluster_hooks.on_start(workflow)
