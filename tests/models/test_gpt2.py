"""GPT-2: causality, attention against an explicit masked reference, FLOPs against FlopCounterMode, and
language-model training through leantrain.fit."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import leantrain as lt
from leantrain import models
from leantrain.errors import UsageError


def math_attention(q, k, v, dropout_p=0.0, is_causal=False):
    """Attention written out: scores, an explicit lower-triangular mask, softmax, weighted sum."""
    length = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(length, length, dtype=torch.bool).tril() if is_causal else torch.ones(length, length).bool()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def _tiny(dataset, **options):
    torch.manual_seed(0)
    spec = "gpt2-tiny:" + ",".join(f"{k}={v}" for k, v in options.items())
    return models.build(spec, dataset("language-model")).eval()


def test_output_at_position_t_ignores_tokens_after_t(dataset):
    model = _tiny(dataset)
    tokens = torch.randint(0, 17, (2, 16))
    changed = tokens.clone()
    changed[:, 9:] = torch.randint(0, 17, (2, 7))
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_sdpa_attention_equals_explicit_causal_reference(dataset, monkeypatch):
    model = _tiny(dataset)
    tokens = torch.randint(0, 17, (3, 16))
    with torch.no_grad():
        fused = model(tokens)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", math_attention)
        reference = model(tokens)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_flops_per_token_match_flop_counter_with_attention_written_out(dataset, monkeypatch):
    # FlopCounterMode does not count the fused CPU attention kernel, so count with attention as matmuls.
    model = _tiny(dataset, n_layer=3, n_embd=32)
    tokens = torch.randint(0, 17, (2, 16))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", math_attention)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    assert model.flops_per_sample() == pytest.approx(counter.get_total_flops() / tokens.numel(), rel=1e-9)


def test_gpt2_small_flops_per_token_follow_the_standard_estimate():
    x = torch.zeros(2, 1024, dtype=torch.long)
    data = lt.data.Dataset("text", x, x, x, x, task="language-model", info={"vocab_size": 50257})
    with torch.device("meta"):
        model = models.build("gpt2", data)
    non_embedding = 124_439_808 - 1024 * 768  # nanoGPT's N: positions excluded, the tied head counted
    standard = 2 * non_embedding + 4 * 12 * 1024 * 768  # 2N + 4 n_layer T d (nanoGPT/PaLM, forward)
    assert model.flops_per_sample() == pytest.approx(standard, rel=0.002)  # biases and norms: the 0.1% gap


def test_head_is_tied_to_the_token_embedding(dataset):
    model = _tiny(dataset)
    assert model.lm_head.weight is model.wte.weight


def test_sequences_longer_than_the_context_are_refused(dataset):
    with pytest.raises(UsageError, match="ctx=8"):
        models.build("gpt2-tiny:ctx=8", dataset("language-model"))


def test_fit_trains_a_language_model_and_reports_perplexity(dataset):
    torch.manual_seed(0)
    data = dataset("language-model", n=64)
    model = models.build("gpt2-tiny:n_embd=32", data)
    record = lt.fit(model, data, epochs=4, batch_size=16, lr=1e-2)
    first, last = record["epochs"][0], record["epochs"][-1]
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]), rel=1e-4)
    assert last["val_ppl"] < 0.5 * first["val_ppl"]
    assert last["train_tokens"] == 64 * 16 and last["val_tokens"] == 64 * 16
    assert record["run"]["metric"] == "val_ppl" and record["run"]["higher_is_better"] is False
