"""EpochSums: an epoch's counts by name, summed over the data ranks in one collective whatever their number."""
from dataclasses import dataclass

from leantrain.parallel.dist import Dist
from leantrain.train.sums import EpochSums


class TwoRanks:
    """A Dist whose other rank holds ``other``'s values: its sum is element-wise; each call is one collective."""

    def __init__(self, other: list[float]):
        self.other, self.calls = other, 0

    def sum(self, values):
        self.calls += 1
        return [float(a) + float(b) for a, b in zip(values, self.other)]


def _last_values(sums: EpochSums) -> list[float]:
    """What a rank holding ``sums`` puts into the collective, in reduce's order."""
    seen: list[list[float]] = []

    class Spy:
        def sum(self, values):
            seen.append(list(values))
            return [float(v) for v in values]

    sums.reduce(Spy())
    return seen[0]


def test_add_counts_a_step_and_keeps_tokens_none_where_the_task_counts_none():
    sums = EpochSums()
    sums.add(units=10, samples=10, steps=1)
    sums.add(units=6, samples=6, steps=1, tokens=None)
    assert (sums.units, sums.samples, sums.steps, sums.tokens) == (16, 16, 2, None)
    sums.add(units=3, samples=1, steps=1, tokens=3)
    assert sums.tokens == 3


def test_reduce_sums_every_field_over_the_ranks_in_one_collective():
    mine = EpochSums(loss=1.5, units=4, samples=2, steps=1, correct=3.0, timed_samples=2, tokens=4,
                     metrics={"nll": 0.5, "correct": 3.0})
    theirs = EpochSums(loss=2.25, units=6, samples=3, steps=1, correct=1.0, timed_samples=3, tokens=6,
                       metrics={"nll": 0.25, "correct": 1.0})
    dist = TwoRanks(_last_values(theirs))
    total = mine.reduce(dist)
    assert dist.calls == 1
    assert total == EpochSums(loss=3.75, units=10, samples=5, steps=2, correct=4.0, timed_samples=5, tokens=10,
                              metrics={"nll": 0.75, "correct": 4.0})
    assert all(type(v) is int for v in (total.units, total.samples, total.steps, total.timed_samples, total.tokens))
    assert list(total.metrics) == ["nll", "correct"]  # the order they were counted in, whatever the collective's


def test_on_one_process_reduce_gives_the_same_numbers():
    sums = EpochSums(loss=0.1 + 0.2, units=3, samples=3, steps=1, metrics={"squared_error": 1e-9})
    assert sums.reduce(Dist()) == sums
    assert EpochSums().reduce(Dist()).tokens is None


def test_a_new_field_is_summed_without_touching_reduce():
    @dataclass
    class WithPadding(EpochSums):
        padding: int = 0

    total = WithPadding(units=2, padding=5).reduce(TwoRanks(_last_values(WithPadding(units=1, padding=2))))
    assert isinstance(total, WithPadding) and (total.units, total.padding) == (3, 7)


def test_asdict_names_every_field():
    assert EpochSums(units=2, metrics={"correct": 1.0}).asdict() == {
        "loss": 0.0, "units": 2, "samples": 0, "steps": 0, "correct": 0.0, "timed_samples": 0, "tokens": None,
        "metrics": {"correct": 1.0}}
