"""Models trained elsewhere (config ``models.pretrained.<dataset>``), scored without training.

Each file the config names (one per lambda and seed) holds the weights of one model as a state
dict: ``torch.save(model.state_dict(), path)``, or a mapping with the state dict under
``state_dict`` or ``model_state_dict`` (a jacreg checkpoint is one), keys optionally prefixed
``module.`` (``DataParallel``). It is read weights-only (``torch.load(weights_only=True)``): a
file that would unpickle objects is refused. The architecture is the import path the config
names (``models.pretrained.<dataset>.architecture``, with its ``arch_kwargs``), built for the
dataset's channels, image size and classes; the weights must match it exactly (strict
loading) and the model must map the data's inputs to K logits. The result is a jacreg checkpoint
at the place a trained model would have, so the attacks, the Jacobian analysis, the attack suite
and the report treat it like one.

The model must take inputs in [0, 1] (as the pipeline feeds them) and do any normalization
itself; lambda is the regularization strength the user trained it with (lambda = 0 is the
baseline of the claims).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from jacreg.data import load_prepared_spec, to_float
from jacreg.io import load_torch
from jacreg.metrics import accuracy, predict
from jacreg.models import architecture_kwargs, build_model, check_logits, save_checkpoint
from jacreg.sources import file_digest

log = logging.getLogger(__name__)

STATE_KEYS = ("state_dict", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (see the module docstring), read weights-only."""
    payload = load_torch(path)
    if isinstance(payload, Mapping):
        for key in STATE_KEYS:
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not payload:
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors, "
                         f"or a mapping with one under {' or '.join(STATE_KEYS)})")
    odd = sorted(k for k, v in payload.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise ValueError(f"{path}: not a state dict: entries {odd[:5]} are not tensors")
    state = {str(k): v for k, v in payload.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def import_model(source: str | Path, out: str | Path, dataset: str, lam: float, seed: int,
                 architecture: str, arch_kwargs: Mapping[str, Any] | None,
                 data_file: str | Path) -> None:
    """Write the jacreg checkpoint ``out`` for the weights in ``source``."""
    tensors, spec = load_prepared_spec(data_file, dataset)
    key = f"config key 'models.pretrained.{dataset}'"
    kwargs = architecture_kwargs(spec.channels, spec.num_classes, spec.image_size, arch_kwargs)
    model = build_model(architecture, origin=f"{key}.architecture", **kwargs)
    state = read_state_dict(source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not match architecture {architecture!r} "
                         f"({key}): {str(error).splitlines()[0]}") from error
    check_logits(model, spec.channels, spec.height, spec.width, spec.num_classes,
                 f"{source} ({key})")
    model.eval()
    clean = accuracy(predict(model, to_float(tensors["x_test"])), tensors["y_test"])
    log.info("imported %s: architecture=%s lambda=%g seed=%d clean_accuracy=%.4f", source,
             architecture, lam, seed, clean)
    meta = {"dataset": dataset, "lambda": float(lam), "seed": int(seed), "pretrained": True,
            "source": str(source), "source_sha256": file_digest(Path(source), "sha256"),
            "clean_accuracy": clean, "torch": str(torch.__version__)}
    save_checkpoint(model, out, architecture, kwargs, meta)
