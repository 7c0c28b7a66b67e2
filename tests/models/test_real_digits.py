"""Real data (scikit-learn's 1,797 handwritten digits): the zoo's image models reach published-level accuracy."""
import pytest
import torch

import leantrain as lt
from leantrain.models import build


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("model,data,epochs,batch_size,lr,bar", [
    ("cnn", "digits-image", 20, 64, 2e-3, 0.97),
    ("mlp", "digits", 15, 32, 3e-3, 0.95),
])
def test_model_reaches_its_bar_on_held_out_real_digits(model, data, epochs, batch_size, lr, bar, seed):
    torch.manual_seed(seed)
    dataset = lt.data.load(data, seed=seed)
    record = lt.fit(build(model, dataset), dataset, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr)
    assert record["summary"]["final_val_acc"] >= bar
