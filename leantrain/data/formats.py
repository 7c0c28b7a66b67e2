"""Readers for real data sets in their published on-disk formats, from a folder the user names. Never downloads.

- CIFAR-10 "python version": ``data_batch_1..5`` and ``test_batch``, pickled dicts with ``b"data"`` (N x 3072
  uint8, channel-major 3 x 32 x 32) and ``b"labels"``.
- MNIST IDX: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, raw or ``.gz``.
- WikiText-2 raw: ``wiki.{train,valid,test}.raw``.
- IMDB: ``aclImdb/{train,test}/{pos,neg}/*.txt``.

A missing or malformed file raises UsageError naming the file and what was expected.

Unpickling risk: a pickle can name any importable callable and have it called while loading (``os.system``
included), so loading a pickle from an untrusted source runs that source's code. ``SafeUnpickler`` resolves
only the few numpy functions that rebuild a plain array (and ``_codecs.encode``, which Python-3 protocol-2
pickles use for bytes) and refuses every other global, so a CIFAR file can carry data but not code. What
remains possible is a file that is merely wrong (huge, or the wrong shapes); the reader checks those.
"""
from __future__ import annotations

import codecs
import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from leantrain.errors import UsageError

# --- CIFAR-10 -----------------------------------------------------------------------------------------------------


def _numpy_function(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    core = "numpy._core" if hasattr(np, "_core") else "numpy.core"
    reconstruct = _numpy_function(f"{core}.multiarray", "_reconstruct")
    frombuffer = _numpy_function(f"{core}.numeric", "_frombuffer")
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core", "numpy._core"):  # files written under numpy 1 name numpy.core, under 2 numpy._core
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals that rebuild numpy arrays; any other global is an error, not a call."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file") from None


def safe_unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            # Python 2 pickles (the published CIFAR files) hold byte strings: keep them as bytes.
            return SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UsageError(f"{path} is not a CIFAR-10 python batch (a pickled dict of numpy arrays): {e}") from None


def _find(root: Path, names: list[str], subfolders: list[str], what: str) -> Path:
    """The folder under ``root`` (or one of its usual subfolders) holding the first name."""
    for sub in ["", *subfolders]:
        folder = root / sub if sub else root
        for name in names:
            if (folder / name).is_file():
                return folder
    raise UsageError(f"no {names[0]} under {root} (looked in {', '.join(['.', *subfolders])}); expected {what}")


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    if not path.is_file():
        raise UsageError(f"missing CIFAR-10 file {path}")
    batch = safe_unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UsageError(f"{path} is not a CIFAR-10 batch: expected a dict with keys b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = getattr(data, "shape", type(data).__name__)
        raise UsageError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {found}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` from the five training batches and the test batch."""
    what = "the CIFAR-10 python batches data_batch_1..5 and test_batch"
    folder = _find(Path(root), ["data_batch_1"], ["cifar-10-batches-py"], what)
    train = [read_cifar10_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read_cifar10_batch(folder / "test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


# --- MNIST IDX ----------------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes; 3 dims / 1 dim


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (raw or gzipped), checked against its magic number and stated sizes."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UsageError(f"{path} is not a valid gzip file: {e}") from None
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim:
        raise UsageError(f"{path} is too short for an IDX header ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise UsageError(f"{path}: IDX magic number {found:#010x}, expected {magic:#010x} (unsigned bytes, {ndim}-d)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise UsageError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes of data, file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_mnist(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: images (N, 28, 28) uint8, labels (N,) int64."""
    root = Path(root)
    what = "MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (raw or .gz)"
    names = ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
    folder = _find(root, names, ["raw", "MNIST/raw"], what)

    def one(stem: str, magic: int) -> np.ndarray:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return read_idx(folder / name, magic)
        raise UsageError(f"missing MNIST file {folder / stem} (or {stem}.gz); expected {what}")

    out = []
    for split in ("train", "t10k"):
        images = one(f"{split}-images-idx3-ubyte", IDX_IMAGES_MAGIC)
        labels = one(f"{split}-labels-idx1-ubyte", IDX_LABELS_MAGIC)
        if len(images) != len(labels) or (len(labels) and labels.max() > 9):
            raise UsageError(f"{folder}: {split} has {len(images)} images, {len(labels)} labels (must match, in 0..9)")
        out += [images, labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


# --- WikiText-2 raw -----------------------------------------------------------------------------------------------


def read_wikitext(root: str | Path) -> dict[str, bytes]:
    """``{"train", "valid", "test"}`` -> the raw UTF-8 bytes of each split."""
    what = "WikiText-2 raw files wiki.train.raw, wiki.valid.raw, wiki.test.raw"
    folder = _find(Path(root), ["wiki.train.raw"], ["wikitext-2-raw", "wikitext-2-raw-v1/wikitext-2-raw"], what)
    splits = {}
    for split in ("train", "valid", "test"):
        path = folder / f"wiki.{split}.raw"
        if not path.is_file():
            raise UsageError(f"missing WikiText file {path}; expected {what}")
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{path} is not UTF-8 text: {e}") from None
        splits[split] = data
    return splits


# --- IMDB (aclImdb) -----------------------------------------------------------------------------------------------


def read_aclimdb(root: str | Path) -> dict[str, tuple[list[str], list[int]]]:
    """``{"train", "test"}`` -> (reviews, labels) with label 1 for pos, 0 for neg, in file-name order."""
    what = "the IMDB folder tree aclImdb/{train,test}/{pos,neg}/*.txt"
    root = Path(root)
    base = root / "aclImdb" if (root / "aclImdb").is_dir() else root
    out = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, polarity in ((0, "neg"), (1, "pos")):
            folder = base / split / polarity
            if not folder.is_dir():
                raise UsageError(f"missing IMDB folder {folder}; expected {what}")
            for path in sorted(folder.glob("*.txt")):
                try:
                    texts.append(path.read_text(encoding="utf-8"))
                except UnicodeDecodeError as e:
                    raise UsageError(f"{path} is not UTF-8 text: {e}") from None
                labels.append(label)
        if not texts:
            raise UsageError(f"no reviews under {base / split}; expected {what}")
        out[split] = (texts, labels)
    return out

