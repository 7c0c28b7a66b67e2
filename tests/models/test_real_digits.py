"""Real data (scikit-learn's 1,797 handwritten digits): the zoo's image models reach published-level accuracy."""
import pytest
import torch

import leantrain as lt
from leantrain.models import build


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_reaches_97_percent_on_held_out_real_digits(seed):
    torch.manual_seed(seed)
    data = lt.data.load("digits-image", seed=seed)
    record = lt.fit(build("cnn", data), data, seed=seed, epochs=20, batch_size=64, lr=2e-3)
    assert record["summary"]["final_val_acc"] >= 0.97


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_reaches_95_percent_on_held_out_real_digits(seed):
    torch.manual_seed(seed)
    data = lt.data.load("digits", seed=seed)
    record = lt.fit(build("mlp", data), data, seed=seed, epochs=15, batch_size=32, lr=3e-3)
    assert record["summary"]["final_val_acc"] >= 0.95
