"""Image and text stand-ins: the agreed shapes and dtypes, deterministic by seed, with learnable structure."""
import pytest
import torch

from leantrain.data import load
from leantrain.errors import UsageError

SPECS = {
    "cifar10-sim:n=200": ((3, 32, 32), torch.float32, "classification"),
    "mnist-sim:n=200": ((1, 28, 28), torch.float32, "classification"),
    "mnist-sim:n=200,task=reconstruction": ((1, 28, 28), torch.float32, "reconstruction"),
    "imdb-sim:n=200,max_len=32": ((32,), torch.long, "classification"),
    "wikitext-sim:n_tokens=5000,seq_len=16": ((16,), torch.long, "language-model"),
    "digits-image": ((1, 8, 8), torch.float32, "classification"),
}


@pytest.mark.parametrize("spec", SPECS)
def test_shapes_dtypes_and_seed_determinism(spec):
    shape, dtype, task = SPECS[spec]
    a, b, c = (load(spec, seed=s) for s in (1, 1, 2))
    assert a.task == task and a.input_shape == shape and a.x_train.dtype == dtype
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a.x_train, c.x_train)
    if task == "classification":
        assert a.y_train.dtype == torch.long and a.y_train.shape == (len(a.x_train),)
        assert int(a.y_train.max()) < a.num_classes
    if a.x_train.dtype == torch.long:
        assert 0 <= int(a.x_train.min()) and int(a.x_train.max()) < a.info["vocab_size"]


def test_image_sims_split_80_20_and_standardise():
    data = load("cifar10-sim:n=500")
    assert len(data.x_train) == 400 and len(data.x_val) == 100
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(data.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_reconstruction_target_is_the_input_in_unit_range():
    data = load("mnist-sim:n=100,task=reconstruction")
    assert data.y_train is data.x_train and data.y_val is data.x_val
    assert 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    with pytest.raises(UsageError, match="task='regression' is unknown; choose one of: classification, reconstruction"):
        load("mnist-sim:task=regression")


def test_image_classes_are_separable_by_nearest_class_mean():
    data = load("mnist-sim:n=1000,max_shift=0")
    means = torch.stack([data.x_train[data.y_train == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(data.x_val.flatten(1), means).argmin(1)
    assert (predicted == data.y_val).float().mean() > 0.6  # chance is 0.1


def test_imdb_sim_pads_with_zero_and_sentiment_words_predict_the_label():
    data = load("imdb-sim:n=5000")
    lengths = (data.x_train != 0).sum(1)
    assert int(lengths.min()) >= 128 // 4 and bool(((data.x_train != 0).long().diff(dim=1) <= 0).all())  # pads last
    # Words much more frequent in one class than the other carry the label on held-out reviews.
    counts = torch.zeros(2, data.info["vocab_size"])
    for k in (0, 1):
        words = data.x_train[data.y_train == k].flatten()
        counts[k].index_add_(0, words, torch.ones(len(words)))
    weight = ((counts[1] + 1) / (counts[0] + 1)).log()
    weight[0] = 0
    weight[weight.abs() < 0.5] = 0  # keep only the strongly one-sided words
    predicted = (weight[data.x_val].sum(1) > 0).long()
    assert (predicted == data.y_val).float().mean() > 0.7


def test_wikitext_sim_targets_are_the_next_tokens_and_context_helps():
    data = load("wikitext-sim:n_tokens=60000,seq_len=32")
    assert torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])
    assert torch.equal(data.x_train[1:, 0], data.y_train[:-1, -1])  # windows are consecutive in the stream
    stream = torch.cat([data.x_train.flatten(), data.y_train[-1, -1:]])

    def conditional_entropy(context: torch.Tensor, nxt: torch.Tensor) -> float:
        _, ids = torch.unique(context, dim=0, return_inverse=True)
        joint = torch.unique(torch.stack([ids, nxt], 1), dim=0, return_counts=True)[1].float()
        per_context = torch.bincount(ids).float()
        return float((-(joint * joint.log2()).sum() + (per_context * per_context.log2()).sum()) / len(nxt))

    bigram = conditional_entropy(stream[1:-1, None], stream[2:])
    trigram = conditional_entropy(torch.stack([stream[:-2], stream[1:-1]], 1), stream[2:])
    assert bigram < 4.0 < 8.0  # far below the 8 bits of uniform bytes
    assert trigram < bigram - 0.4


def test_digits_image_is_digits_reshaped_with_the_same_split():
    flat, image = load("digits", seed=3), load("digits-image", seed=3)
    assert torch.equal(image.x_train.flatten(1), flat.x_train) and torch.equal(image.y_val, flat.y_val)
