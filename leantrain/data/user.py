"""A user's own data as a leantrain Dataset: tensors, numpy arrays, a torch ``Dataset`` or a ``DataLoader``.

By default every form ends as in-memory train and validation tensors (what the loop's batch sources slice on
the device, the fast path): a ``Dataset`` or ``DataLoader`` is read once, in order, and its batches concatenated;
one whose items read differently twice (a random augmentation, see ``reads.py``) is streamed instead, said in one
warning, so each epoch draws new samples (``stream=False`` reads it once all the same). ``stream=True`` reads
batches as training goes (``leantrain.data.streaming``), for data larger than memory. Inputs that are tuples or
dicts of tensors (a model with several inputs) are held in memory when read so, and served batch by batch like a
stream either way. ``task`` not given: classification, unless whole-number targets read as a quantity
(``targets.py``; a stream's targets are not read ahead, so it is classification).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.reads import changes_between_reads
from leantrain.data.streaming import Stream
from leantrain.data.targets import check_task, resolve_task
from leantrain.errors import UsageError


def as_tensor(value: Any, what: str) -> Tensor:
    """A tensor from a tensor or a numpy array (float64 arrays become float32, as torch's default dtype)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise UsageError(f"{what} is a numpy array of {value.dtype}; convert it to numbers first")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        return tensor.float() if tensor.dtype == torch.float64 else tensor
    raise UsageError(f"{what} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def tensors_dataset(x: Any, y: Any, *, val: tuple[Any, Any] | None, val_fraction: float, seed: int, name: str,
                    task: str | None) -> Dataset:
    if isinstance(x, (tuple, list, Mapping)):  # several inputs: served batch by batch
        pairs = _Pairs(x, y)
        val_pairs = _Pairs(*val) if val is not None else None
        return streamed_dataset(Stream(pairs), Stream(val_pairs) if val_pairs else None, val_fraction=val_fraction,
                                seed=seed, name=name, task=resolve_task(task, pairs.y, f"data {name}"))
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise UsageError(f"x and y must hold the same number of samples: x has shape {tuple(x.shape)}, y {tuple(y.shape)}")
    task = resolve_task(task, y, f"data {name}")
    if val is None:
        splits = split_train_val(x, y, val_fraction, seed)
    else:
        x_val, y_val = as_tensor(val[0], "val x"), as_tensor(val[1], "val y")
        if len(x_val) != len(y_val) or x_val.shape[1:] != x.shape[1:] or y_val.shape[1:] != y.shape[1:]:
            raise UsageError(f"val=(x, y) must match the training data's shapes per sample: train x {tuple(x.shape)}, "
                             f"y {tuple(y.shape)}; val x {tuple(x_val.shape)}, y {tuple(y_val.shape)}")
        splits = (x, y, x_val, y_val)
    labels = task == "classification" and not y.is_floating_point() and y.numel() > 0
    num_classes = int(max(int(splits[1].max()), int(splits[3].max()) if len(splits[3]) else 0)) + 1 if labels else None
    return Dataset(name, *splits, task=task, num_classes=num_classes)


def _read_all(source: Any, what: str) -> tuple[Any, Tensor]:
    """Concatenate a Dataset's samples (or a DataLoader's batches), each an (x, y) pair; x a tensor or array, or a
    tuple/list or dict of them (a model with several inputs), kept in that shape."""
    from torch.utils.data import DataLoader

    loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=1024, shuffle=False)
    xs: list[Any] = []
    ys: list[Tensor] = []
    for index, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UsageError(f"{what}: each item must be an (x, y) pair; item {index} is a "
                             f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        xs.append(batch[0])
        ys.append(as_tensor(batch[1], f"{what} y"))
    if not xs:
        raise UsageError(f"{what} is empty")
    return _joined(xs, f"{what} x"), _joined(ys, f"{what} y")


def _joined(parts: list[Any], what: str) -> Any:
    """Batches of inputs concatenated along the samples, keeping their shape: a tensor, a tuple or a dict of them."""
    first = parts[0]
    if isinstance(first, Mapping):
        if any(not isinstance(p, Mapping) or p.keys() != first.keys() for p in parts):
            raise UsageError(f"{what}: every item must be a dict with the same keys ({', '.join(map(str, first))})")
        return {k: _joined([p[k] for p in parts], f"{what}[{k!r}]") for k in first}
    if isinstance(first, (tuple, list)):
        if any(not isinstance(p, (tuple, list)) or len(p) != len(first) for p in parts):
            raise UsageError(f"{what}: every item must be a tuple of {len(first)} inputs")
        return tuple(_joined([p[i] for p in parts], f"{what}[{i}]") for i in range(len(first)))
    try:
        return torch.cat([as_tensor(p, what) for p in parts])
    except RuntimeError as e:
        raise UsageError(f"{what}: samples differ in shape ({str(e).splitlines()[0][:120]})") from None


def loader_dataset(train: Any, val: Any, *, val_fraction: float, seed: int, name: str, task: str | None,
                   stream: bool | None = None) -> Dataset:
    """``stream``: True streams, False reads into memory, None reads into memory unless the items change between
    reads (then streams, said in one warning)."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    kinds = (DataLoader, TorchDataset)
    if not isinstance(train, kinds) and not hasattr(train, "__iter__"):
        raise UsageError(f"from_loader takes a torch DataLoader or Dataset, got {type(train).__name__}")
    if task is not None:
        check_task(task)
    if stream is None:
        stream = _items_change(train)
    if stream:
        return streamed_dataset(_stream(train), _stream(val) if val is not None else None,
                                val_fraction=val_fraction, seed=seed, name=name, task=task or "classification")
    x, y = _read_all(train, "train data")
    val_xy = _read_all(val, "val data") if val is not None else None
    return tensors_dataset(x, y, val=val_xy, val_fraction=val_fraction, seed=seed, name=name, task=task)


def _items_change(source: Any) -> bool:
    """Whether the training items change when read again (then say so: they will be streamed)."""
    from torch.utils.data import DataLoader

    index = changes_between_reads(source.dataset if isinstance(source, DataLoader) else source)
    if index is None:
        return False
    warnings.warn(f"from_loader: item {index} of the training data reads differently each time (a random "
                  "augmentation?), so it is streamed and every epoch draws new samples; pass stream=True to say so, "
                  "or stream=False to read it once (each sample's first draw, kept for every epoch)", UserWarning,
                  stacklevel=4)
    return True


class _Pairs:
    """Several input tensors (a tuple/list or dict) and targets as a map-style data set of (x, y) pairs."""

    def __init__(self, x: Any, y: Any):
        parts = list(x.values()) if isinstance(x, Mapping) else list(x)
        if not parts:
            raise UsageError("x is an empty tuple/dict of inputs")
        self.x = {k: as_tensor(v, f"x[{k!r}]") for k, v in x.items()} if isinstance(x, Mapping) else \
            tuple(as_tensor(v, f"x[{i}]") for i, v in enumerate(x))
        self.y = as_tensor(y, "y")
        lengths = {len(v) for v in (self.x.values() if isinstance(self.x, dict) else self.x)}
        if lengths != {len(self.y)}:
            raise UsageError(f"every input and y must hold the same number of samples; got inputs of "
                             f"{sorted(lengths)} and y of {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        if isinstance(self.x, dict):
            return {k: v[i] for k, v in self.x.items()}, self.y[i]
        return tuple(v[i] for v in self.x), self.y[i]


def _stream(source: Any) -> Stream:
    from torch.utils.data import DataLoader

    if isinstance(source, DataLoader):  # its data set and collation; leantrain batches, orders and shards
        return Stream(source.dataset, source.collate_fn, source.num_workers)
    return Stream(source)


SAMPLE = 64  # samples kept in memory from each split: the preflight's batch, the probes', the record's shapes


def streamed_dataset(train: Stream, val: Stream | None, *, val_fraction: float, seed: int, name: str,
                     task: str) -> Dataset:
    """A Dataset read batch by batch; ``task`` as resolved (a stream's targets are not read ahead to guess it)."""
    from torch.utils.data import Subset

    if val is None:
        if train.iterable:
            raise UsageError("an iterable Dataset cannot be split: pass val= (another Dataset or DataLoader)")
        n = len(train)
        n_train = round(n * (1.0 - val_fraction))
        if not 0 < n_train < n:
            raise UsageError(f"val_fraction={val_fraction} of {n} samples leaves an empty split; use a value in (0, 1)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()  # as split_train_val
        val = Stream(Subset(train.dataset, order[n_train:]), train.collate_fn, train.num_workers)
        train = Stream(Subset(train.dataset, order[:n_train]), train.collate_fn, train.num_workers)
    samples = []
    for what, stream in (("train data", train), ("val data", val)):
        first = next(iter(stream.loader(SAMPLE)), None)
        if first is None:
            raise UsageError(f"{what} is empty")
        if not isinstance(first, (tuple, list)) or len(first) != 2:
            raise UsageError(f"{what}: each item must be an (x, y) pair, got a {type(first).__name__}")
        samples += [first[0], as_tensor(first[1], f"{what} y")]
    x_train, y_train, x_val, y_val = samples
    return Dataset(name, x_train, y_train, x_val, y_val, task=task, num_classes=None, streams=(train, val))
