"""leantrain from a notebook (or a script): train your own model with two recipes, compare them, look inside.

    python examples/quickstart.py [--out DIR]

Each block below is a notebook cell. The tests run this file (tests/test_examples.py).
"""
import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import leantrain as lt

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="leantrain-example-")))
out = parser.parse_args().out

# Data: a seeded synthetic set (or lt.data.from_tensors(x, y) with your own tensors).
data = lt.data.load("healthcare-sim:n=4000", seed=0)


def make_model() -> nn.Module:
    """Your own module; leantrain needs no conventions from it. Same seed: both recipes start alike."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5))


# The seed's recipe (PyTorch's DataLoader, batch 64) and a lean one (sliced tensors, large batch, warmup + cosine);
# the lean run also writes per-step logs (csv here; "tensorboard" too when it is installed).
baseline = lt.fit(make_model(), data, epochs=4, batch_size=64, loader="dataloader")
lean = lt.fit(make_model(), data, epochs=4, batch_size=256, lr=1e-2, schedule="warmup-cosine",
              log="csv", checkpoint_dir=out / "lean", force=True)

# The speedup table: time to the baseline's accuracy, and the quality delta beside it.
print(lt.compare({"baseline": baseline, "lean": lean}))

# Per-epoch numbers as a DataFrame, when pandas is installed.
try:
    frame = lt.epochs_frame(lean)
    print(frame[["epoch", "train_loss", "train_acc", "val_acc", "time_s"]].to_string(index=False))
except ModuleNotFoundError as e:
    print(e)

# The report's plots: time, accuracy (training dashed) and loss per epoch.
figure = lt.plot_epochs({"baseline": baseline, "lean": lean})
figure.savefig(out / "epochs.png")
print(f"plot: {out / 'epochs.png'}; step log: {next((out / 'lean').glob('*.steps.csv'))}")
