"""What counting training accuracy costs the loop: lt.fit with and without the count, interleaved.

The count is an argmax, a compare and a sum per micro-batch on the logits training computed anyway. The
"without" arm swaps the task's ``correct`` for one returning None (the loop then skips the count). Measured
as the process's CPU time on 1 thread, which a busy neighbour disturbs far less than wall time.

    python benchmarks/train_accuracy.py [--repeats 6] [--data imagenet-sim:n=20000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import leantrain as lt
from leantrain.models import build
from leantrain.tasks import Classification

RECIPES = {"baseline (DataLoader, batch 64)": {"batch_size": 64, "loader": "dataloader"},
           "large batch (tensor, 2048)": {"batch_size": 2048}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--data", default="imagenet-sim:n=20000")
    args = parser.parse_args()
    counting = Classification.correct
    Classification.metric_sums = lambda self, out, y: {"correct": counting(self, out, y)}  # validation keeps counting
    data = lt.data.load(args.data, seed=0)
    cpu: dict[tuple[str, bool], list[float]] = {}
    steps: dict[str, int] = {}
    for repeat in range(args.repeats):
        for count in (True, False) if repeat % 2 == 0 else (False, True):
            Classification.correct = counting if count else (lambda self, out, y: None)  # type: ignore[method-assign]
            for recipe, options in RECIPES.items():
                torch.manual_seed(0)
                start = time.process_time()
                record = lt.fit(build("mlp", data), data, epochs=2, threads=1, **options)
                cpu.setdefault((recipe, count), []).append(time.process_time() - start)
                steps[recipe] = sum(e["train_steps"] for e in record["epochs"])
    print("| recipe | steps | CPU s with count | without | ratio | extra per step |\n|---|---|---|---|---|---|")
    for recipe in RECIPES:
        with_count, without = statistics.median(cpu[(recipe, True)]), statistics.median(cpu[(recipe, False)])
        print(f"| {recipe} | {steps[recipe]} | {with_count:.3f} | {without:.3f} | {with_count / without:.3f} | "
              f"{(with_count - without) / steps[recipe] * 1e6:.1f} µs |")


if __name__ == "__main__":
    main()
