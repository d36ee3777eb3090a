"""jacreg: Jacobian regularization against universal adversarial perturbations.

Reproduces Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations", ICANN 2021 (arXiv:2104.10459). Modules: ``data``, ``models``,
``jacobian``, ``uap``, ``train``, ``evaluate``, ``metrics``, ``report``, ``config``.
"""

__version__ = "0.1.0"
