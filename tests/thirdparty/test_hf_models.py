"""Hugging Face models named as ``hf:TYPE[:config options]`` (issue 25, item 3): built from a config, never
downloaded; the data's token ids go in as ``input_ids``, the loss takes the output's ``logits``. Runs in the main
venv (leantrain[hf]); skipped, naming the extra, where transformers is not installed."""
import os

import pytest
import torch

import leantrain as lt
from leantrain import models

from .conftest import record, refused, run_toml, train

transformers = pytest.importorskip("transformers", reason="needs leantrain[hf] (transformers)")

BERT = "hf:bert:hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
TEXT = "imdb-sim:n=96,max_len=16"  # 77 training, 19 validation reviews of 16 word ids (0 pads), 2 classes
QUICK = ("--epochs", "1", "--batch-size", "16", "--memory-check", "false")
TECHNIQUES = ("--precision", "bf16", "--schedule", "warmup-cosine", "--accumulation", "adaptive")


def test_a_tiny_bert_trains_from_the_command_line_with_logits_taken_by_default(tmp_path, capsys):
    code, err = train(capsys, tmp_path, "--model", BERT, "--data", TEXT, *QUICK, *TECHNIQUES)
    assert code == 0, err
    run, epoch = record(tmp_path)["run"], record(tmp_path)["epochs"][0]
    assert run["config"]["output_key"] == "logits"  # no --output-key given
    assert sorted(run["techniques"]) == ["accum-adaptive2-16", "bf16", "warmup0.05-cosine"]
    assert epoch["val_acc"] is not None
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # transformers may not reach the network


def test_an_experiment_file_names_an_hf_model(tmp_path):
    (only,) = run_toml(tmp_path, BERT, TEXT)
    assert only["run"]["config"]["output_key"] == "logits" and only["epochs"][0]["val_acc"] is not None


def test_the_model_is_sized_from_the_data_and_masks_the_padding():
    data = lt.data.load(TEXT)
    model = models.build(BERT, data)
    config = model.hf.config
    assert type(model.hf).__name__ == "BertForSequenceClassification"
    assert (config.vocab_size, config.num_labels, config.pad_token_id) == (2000, 2, 0)
    x = data.x_train[:4]
    model.eval()
    expected = model.hf(input_ids=x, attention_mask=(x != 0).long()).logits
    assert torch.equal(model(x)["logits"], expected)
    assert x.eq(0).any()  # the mask mattered: these reviews are padded


def test_images_get_an_image_classifier_sized_from_them():
    data = lt.data.load("cifar10-sim:n=40,classes=3")
    model = models.build("hf:vit:hidden_size=32,num_hidden_layers=1,num_attention_heads=2,patch_size=8", data)
    config = model.hf.config
    assert type(model.hf).__name__ == "ViTForImageClassification"
    assert (config.image_size, config.num_channels, config.num_labels) == (32, 3, 3)
    assert model(data.x_train[:2])["logits"].shape == (2, 3)  # the images went in as pixel_values


def test_a_language_model_set_gets_a_causal_lm(tmp_path, capsys):
    code, err = train(capsys, tmp_path, "--model", "hf:gpt2:n_embd=32,n_layer=2,n_head=2",
                      "--data", "wikitext-sim:n_tokens=3000,seq_len=16", *QUICK)
    assert code == 0, err
    assert record(tmp_path)["epochs"][0]["val_ppl"] > 1


def test_compile_traces_a_bert_and_the_record_says_so(tmp_path, capsys, fast_compile):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    code, err = train(capsys, tmp_path, "--model", BERT, "--data", TEXT, *QUICK, "--compile", "true")
    assert code == 0, err
    epoch = record(tmp_path)["epochs"][0]
    assert epoch["compiled"] is True, epoch.get("compile_error")
    assert counters["stats"]["unique_graphs"] > graphs


def test_fit_takes_an_hf_model_by_name_and_its_logits(tmp_path):
    result = lt.fit(BERT, lt.data.load(TEXT), epochs=1, batch_size=16, device="cpu", precision="bf16",
                    schedule="warmup-cosine", accumulation="adaptive", memory_check=False)
    assert type(result.model).__name__ == "HuggingFaceModel" and result["epochs"][0]["val_acc"] is not None
    assert result.predict(lt.data.load(TEXT).x_val[:3]).shape == (3, 2)  # the logits, picked by output_key


def test_checkpointing_a_bert_from_the_command_line(tmp_path, capsys):
    code, err = train(capsys, tmp_path, "--model", BERT, "--data", TEXT, *QUICK, "--checkpointing", "sqrt")
    assert code == 0, err
    epoch = record(tmp_path)["epochs"][0]
    assert epoch["checkpointing"] == "sqrt" and epoch["checkpointed_modules"] == ["hf.bert.encoder.layer.0"], epoch


@pytest.mark.parametrize("spec, expected", [
    ("hf:bert:hidden_sise=32", "bert's config has no option 'hidden_sise'; close: hidden_size"),
    ("hf:no_such_type", "transformers has no model type 'no_such_type'"),
    ("hf:bert:num_hidden_layers=two", "option num_hidden_layers='two' is not a valid int"),
    ("hf:bert:hidden_size=33", "not a multiple of the number of attention heads"),
    ("hf:bert:task=translation", "task='translation' is unknown; choose one of: sequence-classification"),
    ("hf:vit", "transformers has no sequence-classification model for 'vit'"),
    ("hf:bert:max_position_embeddings=8", "sequences of 16 tokens exceed its 8 positions"),
])
def test_a_bad_hf_model_is_one_line(tmp_path, capsys, spec, expected):
    assert expected in refused(capsys, tmp_path / "out", "--model", spec, "--data", TEXT, *QUICK)
