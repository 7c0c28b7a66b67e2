"""The reconstruction and language-model tasks: losses per unit, metrics computed another way, and a run
through leantrain.fit for reconstruction and image classification."""
import math

import pytest
import torch

import leantrain as lt
from leantrain import models
from leantrain.tasks import get_task


def test_reconstruction_loss_is_per_element_mse_and_psnr_assumes_unit_range():
    task = get_task("reconstruction")
    target = torch.rand(4, 1, 5, 5)
    output = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    mse = torch.nn.functional.mse_loss(output, target).item()  # PyTorch's mean over elements
    assert task.loss_sum(output, target).item() / task.units(target) == pytest.approx(mse, rel=1e-5)
    assert task.tokens(target) is None
    sums = {k: float(v) for k, v in task.metric_sums(output, target).items()}
    result = task.finalize(sums, task.units(target))
    assert result["val_mse"] == pytest.approx(mse, rel=1e-5)
    assert result["val_psnr"] == pytest.approx(-10 * math.log10(mse), rel=1e-5)


def test_language_model_loss_is_per_token_and_perplexity_is_its_exponential():
    task = get_task("language-model")
    logits, y = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    mean_ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), y.reshape(-1)).item()
    assert task.units(y) == task.tokens(y) == 21
    assert task.loss_sum(logits, y).item() / 21 == pytest.approx(mean_ce, rel=1e-5)
    sums = {k: float(v) for k, v in task.metric_sums(logits, y).items()}
    result = task.finalize(sums, 21)
    assert result["val_ppl"] == pytest.approx(math.exp(mean_ce), rel=1e-5)
    assert result["val_token_acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    task = get_task("language-model")
    y = torch.randint(0, 50, (2, 9))
    sums = {k: float(v) for k, v in task.metric_sums(torch.zeros(2, 9, 50), y).items()}
    assert task.finalize(sums, y.numel())["val_ppl"] == pytest.approx(50.0, rel=1e-5)


def test_fit_trains_the_autoencoder_and_reports_psnr(dataset):
    torch.manual_seed(0)
    data = dataset("reconstruction", n=128)
    record = lt.fit(models.build("conv-autoencoder:width=8", data), data, epochs=6, batch_size=16, lr=1e-2)
    first, last = record["epochs"][0], record["epochs"][-1]
    assert last["val_psnr"] > first["val_psnr"] + 3  # dB
    assert last["val_psnr"] == pytest.approx(-10 * math.log10(last["val_loss"]), rel=1e-6)
    assert record["run"]["metric"] == "val_psnr" and record["summary"]["utilisation"] is not None


def test_fit_trains_the_cnn_on_images(dataset):
    torch.manual_seed(0)
    data = dataset("image", n=256)
    record = lt.fit(models.build("cnn:width=8", data), data, epochs=5, batch_size=32, lr=3e-3)
    assert record["epochs"][-1]["val_acc"] > 0.8
