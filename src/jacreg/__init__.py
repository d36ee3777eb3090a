"""jacreg: Jacobian regularization against universal adversarial perturbations.

Reproduces Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations", ICANN 2021 (arXiv:2104.10459). The public API: ``jacreg.data``,
``jacreg.models``, ``jacreg.jacobian``, ``jacreg.uap``. The modules by layer, the rules and the
data flow: docs/architecture.md; the Snakemake/SLURM plumbing is the subpackage
``jacreg.workflow``.
"""

__version__ = "0.1.0"
