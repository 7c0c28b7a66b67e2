"""On-disk readers: files written in the exact published formats read back byte for byte; bad files fail clearly."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from leantrain.data import formats, load
from leantrain.data.tokenizers import byte_tokens
from leantrain.errors import UsageError


def write_cifar(folder, n=4, protocol=pickle.DEFAULT_PROTOCOL, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = batch
    return written


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_batches_read_back_exactly(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    x_train, y_train, x_test, y_test = formats.read_cifar10(tmp_path)  # the parent folder is found too
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert np.array_equal(x_train.reshape(-1, 3072), np.concatenate([b[b"data"] for b in train]))
    assert y_train.tolist() == sum((b[b"labels"] for b in train), [])
    assert np.array_equal(x_test, written["test_batch"][b"data"].reshape(-1, 3, 32, 32))
    # Channel-major layout: the first 1024 bytes of a row are the red plane.
    assert np.array_equal(x_test[0, 0].ravel(), written["test_batch"][b"data"][0, :1024])
    assert y_test.tolist() == written["test_batch"][b"labels"]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_unpickler_refuses_code_and_never_runs_it(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": []}, f)
    with pytest.raises(UsageError, match=r"data_batch_3 is not a CIFAR-10 .*global (posix|nt).mkdir is not allowed"):
        formats.read_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_corrupt_missing_and_misshapen_files_are_usage_errors(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes((tmp_path / "data_batch_2").read_bytes()[:50])
    with pytest.raises(UsageError, match="data_batch_2 is not a CIFAR-10 python batch"):
        formats.read_cifar10(tmp_path)
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(UsageError, match=r"test_batch: b'data' must be a uint8 array of shape \(N, 3072\)"):
        formats.read_cifar10(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(UsageError, match="missing CIFAR-10 file .*test_batch"):
        formats.read_cifar10(tmp_path)
    with pytest.raises(UsageError, match="no data_batch_1 under"):
        formats.read_cifar10(tmp_path / "elsewhere")


def idx_bytes(array, magic):
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, n_train=6, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{split}-images-idx3-ubyte"] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803)
        arrays[f"{split}-labels-idx1-ubyte"] = (rng.integers(0, 10, n, dtype=np.uint8), 0x801)
    for name, (array, magic) in arrays.items():
        data = idx_bytes(array, magic)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return {name: array for name, (array, _) in arrays.items()}


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reads_back_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    x_train, y_train, x_test, y_test = formats.read_mnist(tmp_path)
    assert np.array_equal(x_train, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(x_test, arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_bad_magic_size_and_missing_file(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">I", 0x803) + labels.read_bytes()[4:])
    with pytest.raises(UsageError, match=r"t10k-labels-idx1-ubyte: IDX magic number 0x00000803, expected 0x00000801"):
        formats.read_mnist(tmp_path)
    write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte: header says \(6, 28, 28\) = 4704 bytes"):
        formats.read_mnist(tmp_path)
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(UsageError, match="missing MNIST file .*t10k-images-idx3-ubyte"):
        formats.read_mnist(tmp_path)


def test_mnist_truncated_gzip_is_a_usage_error(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(UsageError, match="train-labels-idx1-ubyte.gz is not a valid gzip file"):
        formats.read_mnist(tmp_path)


WIKI = {
    "train": " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : <unk> Chronicles ( 戦場のヴァルキュリア3 ) \n",
    "valid": " = Homarus gammarus = \n\n Homarus gammarus , known as the European lobster \n",
    "test": " = Robert Boulter = \n",
}


def write_wikitext(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in WIKI.items():
        (folder / f"wiki.{split}.raw").write_text(text, encoding="utf-8")


def test_wikitext_raw_reads_back_exactly_as_bytes(tmp_path):
    write_wikitext(tmp_path / "wikitext-2-raw")
    splits = formats.read_wikitext(tmp_path)
    assert {k: v.decode("utf-8") for k, v in splits.items()} == WIKI
    assert byte_tokens(splits["train"]).tolist() == list(WIKI["train"].encode("utf-8"))


def test_wikitext_missing_split_and_non_utf8(tmp_path):
    write_wikitext(tmp_path)
    (tmp_path / "wiki.valid.raw").write_bytes(b"\xff\xfe bad")
    with pytest.raises(UsageError, match="wiki.valid.raw is not UTF-8 text"):
        formats.read_wikitext(tmp_path)
    (tmp_path / "wiki.valid.raw").unlink()
    with pytest.raises(UsageError, match="missing WikiText file .*wiki.valid.raw"):
        formats.read_wikitext(tmp_path)


def write_aclimdb(root):
    reviews = {
        ("train", "pos"): ["A great, great film!<br /><br />Loved it.", "Great acting; I'd watch again."],
        ("train", "neg"): ["Awful. Just awful film?", "Boring plot, bad acting."],
        ("test", "pos"): ["great fun", "a film to love"],
        ("test", "neg"): ["bad bad film", "zzz unknownword"],
    }
    for (split, polarity), texts in reviews.items():
        folder = root / "aclImdb" / split / polarity
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_{7 + i}.txt").write_text(text, encoding="utf-8")
    return reviews


def test_aclimdb_tree_reads_back_exactly(tmp_path):
    reviews = write_aclimdb(tmp_path)
    splits = formats.read_aclimdb(tmp_path)
    for split in ("train", "test"):
        texts, labels = splits[split]
        assert texts == reviews[(split, "neg")] + reviews[(split, "pos")]
        assert labels == [0, 0, 1, 1]


def test_aclimdb_missing_folder(tmp_path):
    write_aclimdb(tmp_path)
    for path in (tmp_path / "aclImdb" / "test" / "neg").iterdir():
        path.unlink()
    (tmp_path / "aclImdb" / "test" / "neg").rmdir()
    with pytest.raises(UsageError, match=r"missing IMDB folder .*test/neg"):
        formats.read_aclimdb(tmp_path)


def test_registered_real_sets_build_from_files(tmp_path):
    written = write_cifar(tmp_path / "c", n=4)
    data = load(f"cifar10:path={tmp_path / 'c'}")
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_train.dtype == torch.float32
    assert data.x_val.shape == (4, 3, 32, 32) and data.num_classes == 10
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)  # standardised per channel
    recon = load(f"cifar10:path={tmp_path / 'c'},task=reconstruction,n=8")
    assert recon.y_train is recon.x_train and recon.x_train.shape == (8, 3, 32, 32)
    expected = torch.from_numpy(written["test_batch"][b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(recon.x_val, expected)

    arrays = write_mnist(tmp_path / "m")
    data = load(f"mnist:path={tmp_path / 'm'},task=reconstruction")
    assert data.x_train.shape == (6, 1, 28, 28) and data.y_train is data.x_train
    assert torch.equal(data.x_val[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255)

    write_wikitext(tmp_path / "w")
    data = load(f"wikitext2:path={tmp_path / 'w'},seq_len=16")
    stream = list(WIKI["train"].encode("utf-8"))
    assert data.task == "language-model" and data.info["vocab_size"] == 256 and data.info["tokenizer"] == "bytes"
    assert data.x_train.shape == ((len(stream) - 1) // 16, 16)
    assert data.x_train[1].tolist() == stream[16:32] and data.y_train[1].tolist() == stream[17:33]

    write_aclimdb(tmp_path / "i")
    data = load(f"imdb:path={tmp_path / 'i'},max_len=6,vocab_size=8")
    assert data.x_train.shape == (4, 6) and data.info == {"vocab_size": 8, "pad_index": 0, "real": True}
    assert data.y_val.tolist() == [0, 0, 1, 1]
    # Vocabulary from train by count, ties by word: <pad> <unk> great(3) acting awful film(2) ! ?(1; "!" < "?" < "a").
    assert data.x_val.tolist() == [[1, 1, 5, 0, 0, 0], [1, 1, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0], [1, 5, 1, 1, 0, 0]]
    assert data.x_train[2].tolist() == [1, 2, 2, 5, 6, 1]  # "a great great film ! loved": truncated at max_len


def test_real_sets_need_a_path_and_gpt2_needs_tiktoken(tmp_path):
    for name in ("cifar10", "mnist", "wikitext2", "imdb"):
        with pytest.raises(UsageError, match=f"'{name}' needs path=FOLDER.*{name.replace('2', '')}.*-sim"):
            load(name)
    write_wikitext(tmp_path)
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="tokenizer=gpt2 needs the tiktoken package"):
            load(f"wikitext2:path={tmp_path},tokenizer=gpt2")
    with pytest.raises(UsageError, match="tokenizer='words' is unknown"):
        load(f"wikitext2:path={tmp_path},tokenizer=words")
