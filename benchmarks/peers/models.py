"""The benchmark's models: DeepOBS 3c3d (CIFAR-10 shapes) and the DeepOBS MNIST MLP, seeded by the caller."""

from __future__ import annotations

import torch
import torch.nn as nn


def c3d(batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """DeepOBS 3c3d (Schneider et al. 2019) on CIFAR-10 shapes; TF 'same' max-pooling as padding=1."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 5),  # valid: 32 -> 28
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),  # 28 -> 14
        nn.Conv2d(64, 96, 3),  # valid: 14 -> 12
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),  # 12 -> 6
        nn.Conv2d(96, 128, 3, padding=1),  # same: 6 -> 6
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),  # 6 -> 3
        nn.Flatten(),
        nn.Linear(3 * 3 * 128, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def mlp(batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """DeepOBS MNIST MLP: 784-1000-500-100-10 with ReLU."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1000),
        nn.ReLU(),
        nn.Linear(1000, 500),
        nn.ReLU(),
        nn.Linear(500, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    return model, torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))


MODELS = {"3c3d": ("DeepOBS CIFAR-10 3c3d CNN", c3d), "mlp": ("DeepOBS MNIST MLP 784-1000-500-100-10", mlp)}
