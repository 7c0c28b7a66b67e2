"""Seed 004's accuracy against training time, on the real lines: the CPU recipe of experiments/seed004-accuracy.toml
trained with a model file written at every epoch's end, each then scored by ``leantrain evaluate``'s code on the
real lines (issue 11). The real lines are only read after training; nothing is chosen by them.

    python benchmarks/seed004_curve.py --real ../shared/data/polynomial/real-val-100k.txt --out results/seed004-curve
    python benchmarks/seed004_curve.py ... --lines 20000     # score each epoch on the first 20,000 real lines
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import leantrain as lt
from leantrain import models
from leantrain.experiments.runner import load_experiment
from leantrain.inference.evaluate import evaluate
from leantrain.inference.lines import LineDecoder, read_pairs
from leantrain.inference.model_file import load_model, save_model

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "seed004-accuracy.toml"


class SaveEachEpoch(lt.Callback):
    """A model file per epoch, with the training time so far."""

    def __init__(self, out: Path, model_spec: str, data_spec: str, data: Any):
        self.out, self.model_spec, self.data_spec, self.data = out, model_spec, data_spec, data
        self.files: list[tuple[int, float, Path]] = []
        self.elapsed = 0.0

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        self.elapsed += record["time_s"]
        path = save_model(self.out / f"epoch{record['epoch']}.model.pt", state.model, model_spec=self.model_spec,
                          data_spec=self.data_spec, data=self.data)
        self.files.append((int(record["epoch"]), self.elapsed, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="the real lines (factored=expanded)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=0, help="score on the first N real lines (0: all)")
    parser.add_argument("--data", help="instead of the recipe's (a quick check: polynomial:n=600)")
    parser.add_argument("--epochs", type=int, help="instead of the recipe's")
    args = parser.parse_args()
    (planned,) = load_experiment(EXPERIMENT).runs
    config = planned.config.replace(**{k: v for k, v in (("data", args.data), ("epochs", args.epochs)) if v})
    data = lt.data.load(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = models.build(config.model, data)
    saver = SaveEachEpoch(args.out, config.model, config.data, data)
    options = {k: v for k, v in config.to_dict().items()
               if k in ("epochs", "batch_size", "lr", "schedule", "warmup", "precision", "device", "seed", "eval_batch_size")}
    lt.fit(model, data, callbacks=[saver], checkpoint_dir=args.out, quiet=False, **options)
    print("| training time | epoch | exact match on the real lines |\n|---|---|---|")
    for epoch, elapsed, path in saver.files:
        decoder = LineDecoder(load_model(path), cache=True, batch_size=1000)
        pairs = read_pairs(args.real, decoder)
        scored = evaluate(decoder, pairs[: args.lines] if args.lines else pairs)
        print(f"| {elapsed / 60:.1f} min | {epoch} | {scored.overall.exact_match:.2%} |")


if __name__ == "__main__":
    main()
