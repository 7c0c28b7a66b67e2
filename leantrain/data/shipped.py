"""Real data that packages ship, loaded offline: scikit-learn's digits and breast-cancer sets."""
from __future__ import annotations

import torch

from leantrain.data.dataset import Dataset, split_train_val, standardize
from leantrain.data.registry import DATASETS
from leantrain.errors import UsageError


def _sklearn_dataset(name: str, loader_name: str, seed: int, val_fraction: float) -> Dataset:
    try:
        import sklearn.datasets
    except ImportError:
        raise UsageError(f"data set {name!r} needs scikit-learn; install it with: pip install scikit-learn") from None
    bunch = getattr(sklearn.datasets, loader_name)()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.long)
    x_train, y_train, x_val, y_val = split_train_val(x, y, val_fraction, seed)
    x_train, x_val = standardize(x_train, x_val)
    return Dataset(name, x_train, y_train, x_val, y_val, num_classes=int(y.max()) + 1, info={"real": True})


@DATASETS.register("digits", "scikit-learn digits: 1,797 real 8x8 handwritten digits (64 features), 10 classes")
def digits(*, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    return _sklearn_dataset("digits", "load_digits", seed, val_fraction)


@DATASETS.register("breast-cancer", "scikit-learn breast cancer (Wisconsin): 569 real samples x 30 features, 2 classes")
def breast_cancer(*, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    return _sklearn_dataset("breast-cancer", "load_breast_cancer", seed, val_fraction)


@DATASETS.register("digits-image", "scikit-learn digits as 1x8x8 images (for CNNs): the digits split and scaling")
def digits_image(*, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    flat = _sklearn_dataset("digits-image", "load_digits", seed, val_fraction)
    as_images = {k: getattr(flat, k).view(-1, 1, 8, 8) for k in ("x_train", "x_val")}
    return Dataset(
        "digits-image", as_images["x_train"], flat.y_train, as_images["x_val"], flat.y_val,
        num_classes=flat.num_classes, info=flat.info,
    )
