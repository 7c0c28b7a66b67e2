"""Seed 000's synthetic data sets: features with a learnable, noisy label structure, deterministic by seed.

Labels come from a fixed random teacher network (features -> tanh hidden layer -> class scores) and a
fraction of them is replaced by uniformly random classes. The teacher makes the task learnable by the
seed's MLP; the label noise caps the best achievable accuracy well below 100%, like real data.
"""
from __future__ import annotations

import torch

from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.registry import DATASETS
from leantrain.errors import UsageError


def teacher_classification(
    n: int, features: int, classes: int, *, seed: int, teacher_hidden: int, label_noise: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w_in = torch.randn(features, teacher_hidden, generator=gen) * (2.0 / features**0.5)
    w_out = torch.randn(teacher_hidden, classes, generator=gen) * (margin / teacher_hidden**0.5)
    y = (torch.tanh(x @ w_in) @ w_out).argmax(dim=1)
    noisy = torch.rand(n, generator=gen) < label_noise
    y[noisy] = torch.randint(0, classes, (int(noisy.sum()),), generator=gen)
    return x, y


def _register_sim(name: str, n_default: int, features_default: int, classes_default: int, summary: str) -> None:
    def build(
        *, seed: int = 0, n: int = n_default, features: int = features_default, classes: int = classes_default,
        teacher_hidden: int = 64, label_noise: float = 0.1, margin: float = 3.0, val_fraction: float = 0.2,
    ) -> Dataset:
        for option, value, low in (("n", n, 2), ("features", features, 1), ("classes", classes, 2),
                                   ("teacher_hidden", teacher_hidden, 1)):
            if value < low:
                raise UsageError(f"data set {name!r}: {option}={value} must be at least {low}")
        if not 0.0 <= label_noise <= 1.0:
            raise UsageError(f"data set {name!r}: label_noise={label_noise} must be in [0, 1]")
        # Distinct data per name even at equal seeds: mix the name into the generator's seed.
        data_seed = seed * 1_000_003 + sum(map(ord, name))
        x, y = teacher_classification(
            n, features, classes, seed=data_seed, teacher_hidden=teacher_hidden, label_noise=label_noise, margin=margin
        )
        return Dataset(name, *split_train_val(x, y, val_fraction, seed), num_classes=classes)

    DATASETS.register(name, summary)(build)


_register_sim("imagenet-sim", 50_000, 256, 10, "ImageNet-Sim (seed 000): 50,000 x 256 features, 10 classes, synthetic")
_register_sim("gpt3-sim", 100_000, 512, 20, "GPT3-Corpus-Sim (seed 000): 100,000 x 512 features, 20 classes, synthetic")
_register_sim("healthcare-sim", 20_000, 128, 5, "Healthcare-Sim (seed 000): 20,000 x 128 features, 5 classes, synthetic")
