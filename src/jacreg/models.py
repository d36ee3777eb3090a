"""Model architectures, a registry, and checkpoints that carry their own architecture.

A checkpoint is a plain dict of tensors and primitives::

    {"format": "jacreg-checkpoint-v1", "architecture": str, "arch_kwargs": {...},
     "state_dict": {...}, "meta": {...}}

and is always read with ``torch.load(weights_only=True)``, so a file carrying a pickled object
that would run code is refused instead of executed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jacreg.io import load_torch, save_torch

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


def build_model(architecture: str, **arch_kwargs: Any) -> nn.Module:
    """Instantiate a registered architecture."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture](**arch_kwargs)


def save_checkpoint(model: nn.Module, path: str | Path, architecture: str,
                    arch_kwargs: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Write weights plus the architecture that reads them, atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"format": CHECKPOINT_FORMAT, "architecture": architecture,
                "arch_kwargs": dict(arch_kwargs), "state_dict": state, "meta": dict(meta or {})},
               path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint weights-only and return the model in eval mode.

    Refuses files that are not jacreg checkpoints, that would unpickle arbitrary objects, or whose
    weights do not match the architecture they name.
    """
    payload = load_torch(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a jacreg checkpoint (expected format {CHECKPOINT_FORMAT})")
    try:
        model = build_model(payload["architecture"], **dict(payload["arch_kwargs"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed jacreg checkpoint: {error}") from error
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match architecture {payload['architecture']!r}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    model.checkpoint_meta = payload.get("meta", {})  # type: ignore[attr-defined]
    return model.to(device).eval()
