"""Write a polynomial data set's held-out split as ``factored=expanded`` lines: the lines a run validated on, for
``leantrain evaluate --data polynomial-file:path=FILE`` to score candidates (averaged checkpoints, say) on them
instead of the real lines, which choose nothing.

    python benchmarks/seed004_held_out.py "polynomial:n=3350000,val_fraction=0.0015" results/seed004-val-lines.txt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import leantrain as lt
from leantrain.data.polynomial import CharTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the run's data spec, as its record or recipe gives it")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    data = lt.data.load(args.data)  # the run's own split: the same generator, seed and permutation
    tokenizer = CharTokenizer(data.info.get("vocab"))
    lines = [f"{tokenizer.decode(x)}={tokenizer.decode(y)}" for x, y in zip(data.x_val, data.y_val)]
    args.out.write_text("".join(line + "\n" for line in lines))
    print(f"{len(lines):,} held-out lines of {args.data}: {args.out}")


if __name__ == "__main__":
    main()
