"""Seed 004's "longer run": a saved model (the 60-minute CPU recipe's) trained further on freshly generated lines
with a new warmup-cosine schedule, then saved for ``leantrain evaluate`` (issue 11).

    leantrain run experiments/seed004-accuracy.toml --out results/seed004-accuracy
    python benchmarks/seed004_longer.py results/seed004-accuracy/<run>.model.pt --out results/seed004-longer
    leantrain evaluate results/seed004-longer/longer.model.pt --data polynomial-file:path=real-val-100k.txt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import leantrain as lt
from leantrain.inference.model_file import load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a saved seq2seq model file (leantrain train --save-model)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="polynomial:n=452000,val_fraction=0.005")
    parser.add_argument("--data-seed", type=int, default=1, help="another seed than training's: fresh lines")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    saved = load_model(args.model)
    data = lt.data.load(args.data, seed=args.data_seed)
    result = lt.fit(saved.model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    schedule="warmup-cosine", warmup=0.02, precision="fp32", device="cpu", quiet=False,
                    checkpoint_dir=args.out)
    for epoch in result.epochs:
        print(f"epoch {epoch['epoch']}: {epoch['time_s']:.0f} s, held-out generated exact match "
              f"{epoch['val_exact_match']:.4f}")
    path = save_model(args.out / "longer.model.pt", saved.model, model_spec=saved.model_spec,
                      data_spec=saved.data_spec, data=data)
    print(f"model: {path}")


if __name__ == "__main__":
    main()
