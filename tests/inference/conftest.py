import pytest
import torch

from leantrain import data, models
from leantrain.inference.model_file import save_model


@pytest.fixture
def model_file(tmp_path):
    """An untrained LSTM seq2seq on the polynomial vocabulary, with weights large enough to write varied lines."""
    torch.manual_seed(0)
    lines = data.load("polynomial:n=40")
    model = models.build("seq2seq:emb=8,hidden=16", lines)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return save_model(tmp_path / "run.model.pt", model, model_spec="seq2seq:emb=8,hidden=16",
                      data_spec="polynomial:n=40", data=lines, record="run.json")
