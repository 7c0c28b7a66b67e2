"""Length buckets (``--length-buckets``), trimmed padding (``--trim-padding``) and label smoothing (``--label-smoothing``)."""
import pytest
import torch
import torch.nn.functional as F

import leantrain as lt
from leantrain import models
from leantrain.config import RunConfig
from leantrain.data.batches import TensorBatches, expected_padding_trimmed, padded_lengths
from leantrain.data.polynomial import polynomial
from leantrain.errors import UsageError
from leantrain.tasks import get_task
from leantrain.train.adapters import task_for
from leantrain.train.run import execute


@pytest.fixture(scope="module")
def lines():
    return polynomial(n=1500, seed=3, val_fraction=0.1)


def _epoch(source, epoch=0):
    return list(source.epoch(epoch))


def test_buckets_visit_every_sample_once_per_epoch_with_each_batch_trimmed_to_its_longest(lines):
    x, y = lines.x_train, lines.y_train
    batches = _epoch(TensorBatches(x, y, 50, seed=1, pad_index=0, buckets=True))
    assert len(batches) == len(TensorBatches(x, y, 50, pad_index=0, buckets=True)) == 27
    rows = {tuple(r[r != 0].tolist()) for bx, _ in batches for r in bx}
    assert sum(len(bx) for bx, _ in batches) == len(x) and rows == {tuple(r[r != 0].tolist()) for r in x}
    for bx, by in batches:
        assert int(padded_lengths(bx, 0).max()) == bx.shape[1] and int(padded_lengths(by, 0).max()) == by.shape[1]
    widths = [bx.shape[1] for bx, _ in batches]
    assert sum(widths) / len(widths) < 0.8 * x.shape[1]  # similar lengths share a batch: most padding is gone


def test_buckets_are_seeded_by_epoch_and_shared_out_between_ranks_as_one_global_batch(lines):
    x, y = lines.x_train, lines.y_train
    one = TensorBatches(x, y, 40, seed=5, pad_index=0, buckets=True)
    assert [b[0].tolist() for b in _epoch(one, 2)] == [b[0].tolist() for b in _epoch(one, 2)]
    assert [b[0].shape for b in _epoch(one, 2)] != [b[0].shape for b in _epoch(one, 3)]
    ranks = [_epoch(TensorBatches(x, y, 20, seed=5, pad_index=0, buckets=True, rank=r, world_size=2), 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(_epoch(one, 2))
    for (whole, _), (first, _), (second, _) in zip(_epoch(one, 2), *ranks):  # batch k of the ranks = batch k of one
        assert sorted(_unpadded(whole)) == sorted(_unpadded(first) + _unpadded(second))


def test_trimming_keeps_the_batches_and_cuts_only_the_padding_every_row_has(lines):
    x, y = lines.x_train, lines.y_train
    widths = []
    for rank in range(2):
        plain = _epoch(TensorBatches(x, y, 50, seed=4, rank=rank, world_size=2), 1)
        trimmed = _epoch(TensorBatches(x, y, 50, seed=4, rank=rank, world_size=2, pad_index=0), 1)
        assert len(trimmed) == len(plain)
        for (px, py), (tx, ty) in zip(plain, trimmed):
            assert tx.shape[1] == int(padded_lengths(px, 0).max()) and ty.shape[1] == int(padded_lengths(py, 0).max())
            assert torch.equal(px[:, : tx.shape[1]], tx) and torch.equal(py[:, : ty.shape[1]], ty)
            assert not px[:, tx.shape[1]:].any() and not py[:, ty.shape[1]:].any()  # only padding was cut
            widths.append(tx.shape[1])
    assert sum(widths) / len(widths) < x.shape[1]  # random batches of 25 rows rarely hold the longest line: work is saved


def test_the_expected_trimmed_share_is_what_trimmed_epochs_cut_on_average(lines):
    x, y = lines.x_train, lines.y_train
    for batch in (8, 50, 400):
        source = TensorBatches(x, y, batch, seed=2, pad_index=0)
        cut = []
        for epoch in range(20):
            _epoch(source, epoch)
            cut.append(source.figures["padding_trimmed"])
        assert expected_padding_trimmed(x, y, 0, batch) == pytest.approx(sum(cut) / len(cut), abs=0.015), batch
    assert expected_padding_trimmed(x, y, 0, 8) > expected_padding_trimmed(x, y, 0, 400)  # bigger: a longer longest
    assert expected_padding_trimmed(x, y, 0, 1) == pytest.approx(
        1 - (padded_lengths(x, 0).double().mean() + padded_lengths(y, 0).double().mean()) / (x.shape[1] + y.shape[1]))


def _unpadded(rows):
    return [tuple(r[r != 0].tolist()) for r in rows]


def test_a_trimmed_batch_gives_the_untrimmed_loss():
    data = polynomial(n=200, seed=0)
    torch.manual_seed(0)
    model = models.build("seq2seq-transformer:d_model=32,heads=2,encoder_layers=1,decoder_layers=1,ff=64", data)
    task = get_task("seq2seq")
    x, y = data.x_train[:8], data.y_train[:8]
    lx, ly = int(padded_lengths(x, 0).max()), int(padded_lengths(y, 0).max())
    assert lx < x.shape[1] and ly < y.shape[1]
    full = task.loss_sum(task.forward(model, x, y), y)
    trimmed = task.loss_sum(task.forward(model, x[:, :lx], y[:, :ly]), y[:, :ly])
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-4)


def test_label_smoothing_changes_the_training_loss_only():
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    plain, smoothed = get_task("classification"), get_task("classification", label_smoothing=0.1)
    expected = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(smoothed.loss_sum(logits, target), expected)
    with torch.no_grad():  # validation: the plain negative log-likelihood
        torch.testing.assert_close(smoothed.loss_sum(logits, target), plain.loss_sum(logits, target))


def test_label_smoothing_length_buckets_and_trimming_are_refused_where_they_do_not_apply():
    with pytest.raises(UsageError, match="label_smoothing must be in"):
        RunConfig(label_smoothing=1.0).validated()
    with pytest.raises(UsageError, match="length_buckets needs loader tensor"):
        RunConfig(length_buckets=True, loader="dataloader").validated()
    with pytest.raises(UsageError, match="trim_padding needs loader tensor, got loader dataloader"):
        RunConfig(trim_padding=True, loader="dataloader").validated()
    with pytest.raises(UsageError, match="trim_padding varies batch shapes.*parallel pipeline"):
        RunConfig(trim_padding=True, parallel="pipeline", procs=2).validated()
    regression = lt.data.from_tensors(torch.randn(20, 3), torch.randn(20, 1), task="regression")
    with pytest.raises(UsageError, match="not to the regression task"):
        task_for(regression, label_smoothing=0.1)
    from leantrain.data.batches import bucket_pad_index

    with pytest.raises(UsageError, match="length_buckets needs padded token sequences.*imagenet-sim"):
        bucket_pad_index(lt.data.load("imagenet-sim:n=100"))
    with pytest.raises(UsageError, match="^trim_padding needs padded token sequences.*imagenet-sim"):
        execute(RunConfig(model="mlp", data="imagenet-sim:n=100", trim_padding=True).validated(), quiet=True)


def test_a_bucketed_smoothed_run_trains_end_to_end(tmp_path):
    record = execute(RunConfig(
        model="seq2seq-transformer:d_model=32,heads=2,encoder_layers=1,decoder_layers=1,ff=64",
        data="polynomial:n=600", epochs=2, batch_size=32, length_buckets=True, label_smoothing=0.1,
    ).validated(), out_dir=tmp_path, quiet=True)
    epochs = record["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] and epochs[-1]["val_loss"] < epochs[0]["val_loss"]


TRANSFORMER = "seq2seq-transformer:d_model=32,heads=2,encoder_layers=1,decoder_layers=1,ff=64"


class Crash(lt.Technique):
    """Interrupts training at the start of an epoch, after the previous epoch's checkpoint was written."""

    def before_step(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


def _transformer(data, dropout=0.0):
    torch.manual_seed(0)
    return models.build(f"{TRANSFORMER},dropout={dropout}", data)


def test_a_trimmed_run_trains_as_the_untrimmed_one_and_an_untrimmed_run_resumes_with_it(tmp_path, monkeypatch):
    """The same batches without their common padding: the same losses, to float rounding, and each epoch's record
    says how much padding was cut. So trim_padding is not part of a run's identity: a run interrupted without it
    resumes with it."""
    from leantrain.models.seq2seq_transformer import Seq2SeqTransformer

    widths: list[int] = []
    forward = Seq2SeqTransformer.forward

    def seen(self, src, tgt_in, decode=False):
        if self.training:
            widths.append(src.shape[1])
        return forward(self, src, tgt_in, decode)

    monkeypatch.setattr(Seq2SeqTransformer, "forward", seen)
    data = polynomial(n=600, seed=1)
    options = dict(epochs=2, batch_size=32, seed=3)

    def fit(folder, trim, **more):
        widths.clear()
        result = lt.fit(_transformer(data), data, checkpoint_dir=tmp_path / folder, trim_padding=trim, **options, **more)
        return result.epochs, sum(widths) / len(widths)

    (plain, plain_width), (trimmed, trimmed_width) = fit("plain", False), fit("trimmed", True)
    assert trimmed_width < 0.95 * plain_width  # the model was given less padding
    assert all(e["padding_trimmed"] > 0.05 for e in trimmed) and "padding_trimmed" not in plain[0]

    def losses(epochs):
        return [[e[key] for key in ("train_loss", "val_loss", "val_exact_match")] for e in epochs]

    torch.testing.assert_close(losses(trimmed), losses(plain), rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyboardInterrupt):
        fit("resumed", False, techniques=[Crash()])
    resumed, _ = fit("resumed", True, resume=True)
    torch.testing.assert_close(losses(resumed), losses(plain), rtol=1e-4, atol=1e-5)
    assert "padding_trimmed" not in resumed[0] and resumed[1]["padding_trimmed"] > 0.05


@pytest.mark.parametrize("model", ["seq2seq", f"{TRANSFORMER},dropout=0.1"])
def test_trimming_is_refused_for_a_model_whose_outputs_depend_on_the_padded_width(tmp_path, model):
    """The LSTM encoder reads the padding (its backward direction starts there); dropout draws its masks over the
    width: trimming would change their results, not only their speed."""
    config = RunConfig(model=model, data="polynomial:n=300", epochs=1, trim_padding=True).validated()
    with pytest.raises(UsageError, match="^trim_padding needs a model whose outputs do not depend on the batch's padded"):
        execute(config, out_dir=tmp_path, quiet=True)
    assert not [f for f in tmp_path.iterdir() if not f.name.startswith(".")]  # no record, no checkpoint (a lock)
    execute(config.replace(trim_padding=False, length_buckets=True), out_dir=tmp_path, quiet=True)  # buckets: its own
