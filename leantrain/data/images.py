"""Image data sets: CIFAR-10 and MNIST from their files, and synthetic stand-ins with the same shapes.

Every image set takes ``task``: "classification" (x standardised per channel with training statistics, y the
class) or "reconstruction" (x in [0, 1] and y the very same tensor, for autoencoders: ``mnist-sim:task=
reconstruction``).

The stand-ins (``cifar10-sim``, ``mnist-sim``) draw one smooth random pattern per class, then make each image
from its class pattern, shifted by a few pixels, blended with a smooth random nuisance pattern of its own and
pixel noise. A CNN can learn the classes (shift-tolerant features help); the nuisance and noise keep it from
being trivial; an autoencoder can learn the smooth structure.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leantrain.data import formats
from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.registry import DATASETS
from leantrain.errors import UsageError

TASKS = ("classification", "reconstruction")


def subsample(x: Tensor, y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random ``n`` of the samples (all of them when ``n`` is 0 or too large)."""
    if not 0 < n < len(x):
        return x, y
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[keep], y[keep]


def image_dataset(
    name: str, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, *, task: str, num_classes: int,
    info: dict,
) -> Dataset:
    """Float images in [0, 1] (N, C, H, W) -> a Dataset for the task."""
    if task not in TASKS:
        raise UsageError(f"data set {name!r}: task={task!r} is unknown; choose one of: {', '.join(TASKS)}")
    if task == "reconstruction":
        return Dataset(name, x_train, x_train, x_val, x_val, task=task, info=info)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Dataset(
        name, (x_train - mean) / std, y_train, (x_val - mean) / std, y_val, num_classes=num_classes,
        info={**info, "mean": mean.flatten().tolist(), "std": std.flatten().tolist()},
    )


def _need_path(name: str, path: str, what: str) -> None:
    if not path:
        raise UsageError(f"data set {name!r} needs path=FOLDER holding {what}; without files use {name}-sim")


@DATASETS.register("cifar10", "CIFAR-10 python batches (path=FOLDER): 50,000 + 10,000 real 3x32x32, 10 classes")
def cifar10(*, seed: int = 0, path: str = "", n: int = 0, n_val: int = 0, task: str = "classification") -> Dataset:
    _need_path("cifar10", path, "the CIFAR-10 python batches (data_batch_1..5, test_batch)")
    x_train, y_train, x_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)) for a in formats.read_cifar10(path))
    return _real_images("cifar10", x_train, y_train, x_val, y_val, seed, n, n_val, task)


@DATASETS.register("mnist", "MNIST IDX files (path=FOLDER, raw or .gz): 60,000 + 10,000 real 1x28x28, 10 classes")
def mnist(*, seed: int = 0, path: str = "", n: int = 0, n_val: int = 0, task: str = "classification") -> Dataset:
    _need_path("mnist", path, "the MNIST IDX files (train-images-idx3-ubyte, ...)")
    x_train, y_train, x_val, y_val = (torch.from_numpy(np.array(a)) for a in formats.read_mnist(path))
    return _real_images("mnist", x_train[:, None], y_train, x_val[:, None], y_val, seed, n, n_val, task)


def _real_images(
    name: str, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, seed: int, n: int, n_val: int, task: str
) -> Dataset:
    # The format's own split: its training files train, its test files validate.
    x_train, y_train = subsample(x_train, y_train, n, seed)
    x_val, y_val = subsample(x_val, y_val, n_val, seed + 1)
    return image_dataset(
        name, x_train.float() / 255, y_train, x_val.float() / 255, y_val, task=task, num_classes=10,
        info={"real": True},
    )


def smooth_fields(count: int, channels: int, size: int, grid: int, gen: torch.Generator) -> Tensor:
    """Random patterns on a coarse grid, upsampled: values in about [0, 1] that vary smoothly across pixels."""
    coarse = torch.rand(count, channels, grid, grid, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def synthetic_images(
    n: int, channels: int, size: int, classes: int, *, seed: int, max_shift: int, nuisance: float, noise: float,
) -> tuple[Tensor, Tensor]:
    """``n`` images (N, C, size, size) in [0, 1] and their classes; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    patterns = smooth_fields(classes, channels, size, 5, gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = patterns[y]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    for dy, dx in torch.unique(shifts, dim=0).tolist():  # one roll per distinct shift, not per image
        rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
        x[rows] = torch.roll(x[rows], shifts=(dy, dx), dims=(2, 3))
    x = (1 - nuisance) * x + nuisance * smooth_fields(n, channels, size, 4, gen)
    x = x + noise * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), y


def _register_sim(name: str, channels: int, size: int, n_default: int, summary: str) -> None:
    def build(
        *, seed: int = 0, n: int = n_default, classes: int = 10, max_shift: int = 3, nuisance: float = 0.5,
        noise: float = 0.1, val_fraction: float = 0.2, task: str = "classification",
    ) -> Dataset:
        data_seed = seed * 1_000_003 + sum(map(ord, name))
        x, y = synthetic_images(
            n, channels, size, classes, seed=data_seed, max_shift=max_shift, nuisance=nuisance, noise=noise
        )
        x_train, y_train, x_val, y_val = split_train_val(x, y, val_fraction, seed)
        return image_dataset(name, x_train, y_train, x_val, y_val, task=task, num_classes=classes, info={})

    DATASETS.register(name, summary + "classification or reconstruction")(build)


_register_sim("cifar10-sim", 3, 32, 5_000, "CIFAR-10 stand-in: 5,000 synthetic 3x32x32, 10 classes; task=")
_register_sim("mnist-sim", 1, 28, 10_000, "MNIST stand-in: 10,000 synthetic 1x28x28, 10 classes; task=")
