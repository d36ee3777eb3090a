"""Model architectures, a registry, and checkpoints that carry their own architecture.

A checkpoint is a plain dict of tensors and primitives::

    {"format": "jacreg-checkpoint-v1", "architecture": str, "arch_kwargs": {...},
     "state_dict": {...}, "meta": {...}}

and is always read with ``torch.load(weights_only=True)``, so a file carrying a pickled object
that would run code is refused instead of executed. ``architecture`` is a registry name or an
import path ``"package.module:factory"`` (:mod:`jacreg.user_code`); a checkpoint naming an import
path that the configuration does not name is refused before its module is imported.

Every analysis and attack runs the model in eval mode (:func:`eval_mode`): BatchNorm uses its
running statistics and Dropout is off, so a model's outputs, Jacobians and UAPs do not depend on
the batch it is evaluated in or on random masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jacreg.io import load_torch, save_torch
from jacreg.user_code import DATA_KWARGS, is_import_path, load_factory

CHECKPOINT_FORMAT = "jacreg-checkpoint-v1"


class SmallCNN(nn.Module):
    """Quick-profile CNN: conv16-5 / pool / conv32-5 / pool / fc100 / fc K."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 100), nn.ReLU(), nn.Linear(100, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class PaperCNN(nn.Module):
    """MNIST-like CNN of the paper profile: conv32-5 / pool / conv64-5 / pool / fc200 / fc K."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Linear(200, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool; He et al., CVPR 2016)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "cnn_small": SmallCNN,
    "cnn": PaperCNN,
    "resnet18": ResNet18,
}


def build_model(architecture: str, *, origin: str = "architecture",
                allowed: Iterable[str] | None = None,
                code_dirs: Iterable[str | Path] | None = None, **arch_kwargs: Any) -> nn.Module:
    """Instantiate a registered architecture or call the factory of an import path.

    Import paths must be allowed (``allowed``, default: :func:`jacreg.user_code.trust`'s list);
    ``origin`` names the config key or file the architecture came from, for the messages.
    """
    if is_import_path(architecture):
        factory = load_factory(architecture, allowed, code_dirs, origin=origin)
        try:
            model = factory(**arch_kwargs)
        except TypeError as error:
            raise ValueError(f"{origin}: {architecture}({_kwargs_text(arch_kwargs)}) failed: "
                             f"{error}; a factory takes in_channels, num_classes and image_size "
                             "(from the data) plus the arch_kwargs of the config") from error
        if not isinstance(model, nn.Module):
            raise ValueError(f"{origin}: {architecture} returned {type(model).__name__}, not a "
                             "torch.nn.Module")
        return model
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{origin}: unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}, "
            "or an import path 'package.module:factory'"
        )
    return ARCHITECTURES[architecture](**arch_kwargs)


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def architecture_kwargs(channels: int, num_classes: int, image_size: int | tuple[int, int],
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of a factory: the data's shape, then the config's ``arch_kwargs``
    (which may not set the data's keys)."""
    clash = sorted(set(extra or {}) & set(DATA_KWARGS))
    if clash:
        raise ValueError(f"arch_kwargs may not set {clash}: they come from the data")
    size: Any = image_size if isinstance(image_size, int) else list(image_size)
    return {"in_channels": int(channels), "num_classes": int(num_classes), "image_size": size,
            **dict(extra or {})}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (running BatchNorm statistics, no Dropout), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_logits(model: nn.Module, channels: int, height: int, width: int, num_classes: int,
                 origin: str) -> None:
    """Fail with a message naming ``origin`` unless the model maps (2, C, H, W) to (2, K)."""
    device = next(iter(model.parameters()), torch.zeros(())).device
    shape = (2, channels, height, width)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(torch.zeros(shape, device=device))
    except Exception as error:  # the user's forward: any failure is a wrong model for the data
        raise ValueError(f"{origin}: the model fails on inputs of shape {shape}: "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{origin}: the model maps inputs {shape} to {got}; expected logits of "
                         f"shape (2, {num_classes}) for the data's {num_classes} classes")


def save_checkpoint(model: nn.Module, path: str | Path, architecture: str,
                    arch_kwargs: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Write weights plus the architecture that reads them, atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"format": CHECKPOINT_FORMAT, "architecture": architecture,
                "arch_kwargs": dict(arch_kwargs), "state_dict": state, "meta": dict(meta or {})},
               path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    allowed: Iterable[str] | None = None,
                    code_dirs: Iterable[str | Path] | None = None) -> nn.Module:
    """Load a checkpoint weights-only and return the model in eval mode.

    Refuses files that are not jacreg checkpoints, that would unpickle arbitrary objects, whose
    weights do not match the architecture they name, or that name an import path outside
    ``allowed`` (default: the list the configuration names, :func:`jacreg.user_code.trust`;
    refused before the module is imported).
    """
    payload = load_torch(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a jacreg checkpoint (expected format {CHECKPOINT_FORMAT})")
    try:
        architecture = payload["architecture"]
        kwargs = dict(payload["arch_kwargs"])
        if not isinstance(architecture, str):
            raise TypeError(f"architecture is {type(architecture).__name__}, not a string")
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed jacreg checkpoint: {error}") from error
    try:
        model = build_model(architecture, origin=str(path), allowed=allowed,
                            code_dirs=code_dirs, **kwargs)
    except TypeError as error:
        raise ValueError(f"{path}: malformed jacreg checkpoint: {error}") from error
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as error:
        raise ValueError(
            f"{path}: weights do not match architecture {architecture!r}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    model.checkpoint_meta = payload.get("meta", {})  # type: ignore[attr-defined]
    return model.to(device).eval()
