"""Progress output never floods a log: one line per epoch when the stream is not a terminal, none from rank > 0."""
import io

import torch
from torch import nn

import leantrain as lt
from leantrain.train.progress import Progress


def test_a_log_file_gets_one_line_per_epoch_and_no_carriage_returns(capsys):
    data = lt.data.load("healthcare-sim:n=600", seed=0)
    torch.manual_seed(0)
    lt.fit(nn.Linear(128, 5), data, epochs=3, batch_size=16, quiet=False, name="p")
    err = capsys.readouterr().err  # captured: not a TTY, as a redirected log is
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["p epoch 1", "p epoch 2", "p epoch 3"]


def test_only_rank_zero_reports():
    stream = io.StringIO()
    for rank in (1, 2):
        progress = Progress(rank=rank, label="r", stream=stream)
        bar = progress.epoch_bar(0, 1, 10)
        bar.update(1, 8)
        bar.close()
        progress.epoch_done({"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "time_s": 0.1, "samples_per_s": 10.0},
                            "val_acc")
        progress.message("hello")
    assert stream.getvalue() == ""
