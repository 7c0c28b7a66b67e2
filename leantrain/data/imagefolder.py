"""A folder of images, one subfolder per class, through torchvision's ``ImageFolder`` (``leantrain[vision]``):
``imagefolder:path=DIR[,size=64,stream=false,normalize=train,val_fraction=0.2]``.

- Classes are the subfolders' names, sorted (``info["classes"]``; label i is the i-th name). Files with an image
  extension (.png, .jpg, .jpeg, .bmp, .webp, ...) count; each image is read as RGB, so x is (N, 3, size, size).
- Every image is resized to ``size`` x ``size`` (aspect ratio not kept) and scaled to [0, 1], then standardised per
  channel: ``normalize=train`` (default) with the training split's mean and std, as leantrain's other image sets;
  ``normalize=imagenet`` with ImageNet's fixed statistics (what pretrained-style recipes expect).
- The train/validation split is a seeded random ``val_fraction``, by the run's seed, as the other data sets'.
- In memory by default: every image read and resized once. ``stream=true`` reads batches from disk as training
  goes (for folders larger than memory); the training statistics are then those of at most ``STATS_IMAGES``
  training images, in the split's seeded order.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.registry import DATASETS
from leantrain.data.streaming import Stream
from leantrain.data.user import streamed_dataset
from leantrain.errors import UsageError

NORMALIZE = ("train", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STATS_IMAGES = 256  # streamed: the training images the mean and std are estimated from


@DATASETS.register("imagefolder", "your images, a subfolder per class: imagefolder:path=DIR[,size=64,stream=true,"
                                  "normalize=train|imagenet] (leantrain[vision])")
def imagefolder(*, seed: int = 0, path: str = "", size: int = 64, stream: bool = False, normalize: str = "train",
                val_fraction: float = 0.2) -> Dataset:
    root = _root(path)
    if size < 1:
        raise UsageError(f"data set 'imagefolder': size={size} must be a positive number of pixels")
    if normalize not in NORMALIZE:
        raise UsageError(f"data set 'imagefolder': normalize={normalize!r} is unknown; choose one of: {', '.join(NORMALIZE)}")
    folder = _image_folder(root, size)
    name = root.name or "imagefolder"
    info = {"classes": list(folder.classes), "size": size, "normalize": normalize, "real": True}
    if stream:
        return _streamed(folder, root, name, seed, val_fraction, normalize, info)
    x, y = _read_all(folder)
    x_train, y_train, x_val, y_val = split_train_val(x, y, val_fraction, seed)
    mean, std = _statistics(x_train, normalize)
    info.update(mean=mean.flatten().tolist(), std=std.flatten().tolist())
    return Dataset(name, (x_train - mean) / std, y_train, (x_val - mean) / std, y_val, num_classes=len(folder.classes),
                   info=info)


def _root(path: str) -> Path:
    if not path:
        raise UsageError("data set 'imagefolder' needs path=DIR: a folder with one subfolder of images per class")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"data set 'imagefolder': path={path!r} is not a folder")
    return root


def _vision(what: str) -> Any:
    try:
        import torchvision
    except ImportError as e:
        raise UsageError(f"{what} needs torchvision, which is not installed ({e}); install it with: "
                         "pip install 'leantrain[vision]'") from None
    except (RuntimeError, OSError) as e:  # a torchvision built for another torch
        raise UsageError(f"{what}: torchvision does not import beside torch {torch.__version__} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]}); install a matching pair (see the README's "
                         ".venv-vision)") from None
    return torchvision


def _image_folder(root: Path, size: int, mean: Tensor | None = None, std: Tensor | None = None) -> Any:
    """torchvision's ImageFolder over ``root``: resized, to [0, 1], standardised when given statistics."""
    torchvision = _vision("data set 'imagefolder'")
    t = torchvision.transforms
    steps = [t.Resize((size, size)), t.ToTensor()]
    if mean is not None and std is not None:
        steps.append(t.Normalize(mean.flatten().tolist(), std.flatten().tolist()))
    try:
        folder = torchvision.datasets.ImageFolder(str(root), transform=t.Compose(steps))
    except FileNotFoundError as e:  # no class subfolders, or a class folder without images
        raise UsageError(f"data set 'imagefolder': {root} holds no images in class subfolders ({e}); expected "
                         f"{root}/CLASS/IMAGE.png, one subfolder per class") from None
    if len(folder.classes) < 2:
        raise UsageError(f"data set 'imagefolder': {root} has {len(folder.classes)} class folder "
                         f"({', '.join(folder.classes)}); classification needs at least 2")
    return folder


def _read_all(folder: Any) -> tuple[Tensor, Tensor]:
    images = [_read(folder, i) for i in range(len(folder))]
    return torch.stack(images), torch.tensor(folder.targets, dtype=torch.long)


def _read(folder: Any, index: int) -> Tensor:
    try:
        return folder[index][0]
    except OSError as e:  # PIL's UnidentifiedImageError, a truncated file
        raise UsageError(f"data set 'imagefolder': {folder.samples[index][0]} is not a readable image "
                         f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None


def _statistics(x_train: Tensor, normalize: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1): the training images' or ImageNet's."""
    if normalize == "imagenet":
        return torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    return mean, x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


def _streamed(folder: Any, root: Path, name: str, seed: int, val_fraction: float, normalize: str,
              info: dict[str, Any]) -> Dataset:
    """Read from disk batch by batch; the split is ``streamed_dataset``'s (the in-memory one's order)."""
    n = len(folder)
    n_train = round(n * (1.0 - val_fraction))
    if not 0 < n_train < n:
        raise UsageError(f"val_fraction={val_fraction} of {n} images leaves an empty split; use a value in (0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    sample = torch.stack([_read(folder, i) for i in order[:min(n_train, STATS_IMAGES)]])
    mean, std = _statistics(sample, normalize)
    normalised = _image_folder(root, info["size"], mean, std)
    data = streamed_dataset(Stream(normalised), None, val_fraction=val_fraction, seed=seed, name=name,
                            task="classification")
    info.update(mean=mean.flatten().tolist(), std=std.flatten().tolist())
    return dataclasses.replace(data, num_classes=len(folder.classes), info=info)
