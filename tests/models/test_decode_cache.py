"""Cached greedy decoding (LSTM state, transformer key/value cache) gives the same tokens as recomputing the
whole model on the prefix each step, for both seq2seq models, in generate and in validation's forward."""
import pytest
import torch

from leantrain import data, models

SPECS = ["seq2seq:emb=16,hidden=32,num_layers=2", "seq2seq-transformer:d_model=32,heads=4,ff=64,encoder_layers=2,decoder_layers=2"]


def _varied(spec: str):
    torch.manual_seed(0)
    lines = data.load("polynomial:n=60")
    model = models.build(spec, lines).eval()
    with torch.no_grad():  # larger random weights: varied, confident tokens instead of one repeated token
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return model, lines


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.split(":")[0])
def test_cached_decode_equals_recomputing_the_prefix(spec):
    model, lines = _varied(spec)
    cached = model.generate(lines.x_val, cache=True)
    recomputed = model.generate(lines.x_val, cache=False)
    assert len(cached.unique()) > 3
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.split(":")[0])
def test_validation_decode_follows_the_decode_cache_switch(spec):
    model, lines = _varied(spec)
    tgt_in = lines.y_val[:, :-1]
    with torch.no_grad():
        logits_on, on = model(lines.x_val, tgt_in, decode=True)
        model.decode_cache = False
        logits_off, off = model(lines.x_val, tgt_in, decode=True)
    assert torch.equal(on, off) and torch.equal(logits_on, logits_off)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.split(":")[0])
def test_early_exit_only_drops_columns_after_every_line_ended(spec):
    model, lines = _varied(spec)
    full = model.generate(lines.x_val)
    short = model.generate(lines.x_val, early_exit=True)
    assert torch.equal(short, full[:, : short.shape[1]])
    assert (full[:, short.shape[1]:] == 0).all()


def test_transformer_default_is_under_5m_parameters_and_declares_flops():
    model = models.build("seq2seq-transformer", data.load("polynomial:n=20"))
    assert 3_000_000 < sum(p.numel() for p in model.parameters()) <= 5_000_000
    assert model.flops_per_sample() > 2 * sum(p.numel() for p in model.decoder.parameters())


def test_decode_cache_off_through_the_loop_changes_no_metric_and_is_recorded():
    import leantrain as lt

    lines = data.load("polynomial:n=80")
    options = {"epochs": 1, "batch_size": 16, "quiet": True}
    torch.manual_seed(0)
    on = lt.fit(models.build("seq2seq:emb=8,hidden=16", lines), lines, **options)
    torch.manual_seed(0)
    off = lt.fit(models.build("seq2seq:emb=8,hidden=16", lines), lines, decode_cache="off", **options)
    assert off["run"]["techniques"] == ["decode-cache-off"] and on["run"]["techniques"] == []
    for key in ("val_exact_match", "val_token_acc", "val_loss"):
        assert off["epochs"][0][key] == on["epochs"][0][key]


def test_decode_cache_off_on_a_model_without_a_decoder_is_a_usage_error():
    import leantrain as lt
    from leantrain.errors import UsageError

    flat = lt.data.from_tensors(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    with pytest.raises(UsageError, match="no cached decoder"):
        lt.fit(torch.nn.Linear(4, 2), flat, epochs=1, decode_cache="off")
