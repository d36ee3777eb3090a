"""The worked example's own model: a small CNN with BatchNorm and Dropout.

jacreg calls ``build(in_channels=C, num_classes=K, image_size=S, **arch_kwargs)`` with C, K and S
read from the data and ``arch_kwargs`` from the config (``train.arch_kwargs``); the config names
it as ``"digits_net:build"`` and lists this folder under ``models.code_dirs``. Inputs are in
[0, 1]; any normalization belongs inside the model.
"""

from __future__ import annotations

from torch import nn


def build(in_channels: int, num_classes: int, image_size: int | list[int],
          width: int = 16, dropout: float = 0.25) -> nn.Module:
    """conv(width)-BN-ReLU-pool / conv(2 width)-BN-ReLU-pool / Dropout / linear K."""
    height, side = (image_size, image_size) if isinstance(image_size, int) else image_size
    features = (2 * width) * (height // 4) * (side // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, num_classes),
    )
