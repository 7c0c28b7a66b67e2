"""The training-accuracy count: predictions kept and compared together give each batch's count made alone."""
import pytest
import torch

from leantrain.tasks import Classification, SequenceToSequence
from leantrain.train import correct_count
from leantrain.train.correct_count import KEEP_BATCHES, CorrectCount


def _batch(generator, rows=16, classes=5):
    return torch.randn(rows, classes, generator=generator), torch.randint(0, classes, (rows,), generator=generator)


def _alone(output, target):
    return int((output.argmax(-1) == target).sum())


def test_kept_outputs_compared_together_equal_each_batch_counted_alone(monkeypatch):
    monkeypatch.setattr(correct_count, "KEEP_OUTPUTS", 40)
    g = torch.Generator().manual_seed(0)
    count, expected = CorrectCount(Classification()), 0
    steps = 49
    for _ in range(steps):
        count.mark()
        for rows in (16, 3):  # two micro-batches a step, of different sizes
            output, target = _batch(g, rows)
            count.add(output.requires_grad_(), target)
            expected += _alone(output, target)
        count.step_done()
        assert len(count.kept_outputs) < 40  # compared on the way, not held past the bound
        assert not count.kept  # small CPU outputs are kept as they are, their argmax made together
        assert all(not output.requires_grad for output, _ in count.kept_outputs)  # no graph kept alive
    assert len(count.counts) == 2 * steps // 40  # full intervals compared on the way, the rest at the end
    assert int(count.total()) == expected


def test_kept_outputs_are_compared_between_steps_before_the_next_would_pass_the_memory_bound(monkeypatch):
    monkeypatch.setattr(correct_count, "KEEP_OUTPUT_BYTES", 2 * 16 * 5 * 4)  # two 16-row outputs exactly
    g = torch.Generator().manual_seed(5)
    count, expected = CorrectCount(Classification()), 0
    for step in range(7):
        count.mark()
        output, target = _batch(g, 16)
        count.add(output, target)
        expected += _alone(output, target)
        count.step_done()
        assert not count.kept  # every output kept as it is: none predicted alone
        assert len(count.kept_outputs) == (step + 1) % 2 and len(count.counts) == (step + 1) // 2
    assert int(count.total()) == expected


def test_outputs_past_the_memory_bound_give_their_predictions_at_once(monkeypatch):
    monkeypatch.setattr(correct_count, "KEEP_OUTPUT_BYTES", 2 * 16 * 5 * 4 - 1)  # two 16-row outputs, one float less
    g = torch.Generator().manual_seed(3)
    count, expected = CorrectCount(Classification()), 0
    for rows in (16, 3, 16, 3):
        output, target = _batch(g, rows)
        count.add(output, target)
        expected += _alone(output, target)
    assert [len(p) for p, _ in count.kept] == [16] and [len(o) for o, _ in count.kept_outputs] == [16, 3, 3]
    assert int(count.total()) == expected


def test_an_output_that_is_a_view_gives_its_predictions_at_once():
    """A view may hold a larger tensor's memory, or change before it is read: a constant prior's output is a view
    of its weight, which the next optimizer step moves."""
    prior = torch.tensor([0.0, 1.0, 0.0])
    target = torch.tensor([1, 1, 0, 2])
    sliced = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))[:, :3]  # a slice of a larger output
    count = CorrectCount(Classification())
    count.add(prior.expand(4, 3), target)  # class 1 for all: 2 correct
    count.add(sliced, target)
    expected = 2 + _alone(sliced, target)
    prior.copy_(torch.tensor([1.0, 0.0, 0.0]))  # the update after the step: class 0 would give 1
    assert not count.kept_outputs and len(count.kept) == 2
    assert int(count.total()) == expected


def test_an_output_refused_for_room_the_kept_ones_hold_has_them_compared_after_its_step(monkeypatch):
    """After a skipped step the next step's size is unknown (its bytes were dropped): an output that finds no room
    is predicted at once, and the kept ones are compared after that step, so the next output is kept again."""
    monkeypatch.setattr(correct_count, "KEEP_OUTPUT_BYTES", 2 * 16 * 5 * 4)  # two 16-row outputs
    g = torch.Generator().manual_seed(7)
    count, expected = CorrectCount(Classification()), 0
    for step, rows in enumerate((16, 16, 20, 20)):
        mark = count.mark()
        output, target = _batch(g, rows)
        count.add(output, target)
        if step == 1:
            count.drop_since(mark)  # skipped: the kept bytes are back to one output's
        else:
            expected += _alone(output, target)
        count.step_done()
    # Compared after the third step (its output predicted) and after the fourth (kept: its own bytes predict the next)
    assert len(count.counts) == 2 and not count.kept and not count.kept_outputs
    assert int(count.total()) == expected


def test_predictions_made_at_once_are_compared_every_keep_batches_micro_batches():
    g = torch.Generator().manual_seed(6)
    count, expected = CorrectCount(Classification()), 0
    for _ in range(KEEP_BATCHES + 3):
        count.mark()
        output, target = _batch(g)
        count.add(output[:, :4], target.clamp(max=3))  # a view: its predictions made at once
        expected += _alone(output[:, :4], target.clamp(max=3))
        count.step_done()
    assert len(count.counts) == 1 and len(count.kept) == 3 and not count.kept_outputs
    assert int(count.total()) == expected


def test_the_compare_writes_nothing_into_a_kept_output():
    """A task whose predictions are its output itself (class indices from the model): the kept output is compared
    as it is, and must come out unchanged."""

    class Indices(Classification):
        def predictions(self, output):
            return output

    output, target = torch.tensor([2, 0, 1]), torch.tensor([2, 1, 1])
    count = CorrectCount(Indices())
    count.add(output, target)
    assert int(count.total()) == 2 and output.tolist() == [2, 0, 1]


# All kept; compared every 4 steps; none kept (each output past the bound: predicted at once, compared every 64)
@pytest.mark.parametrize("bound", [correct_count.KEEP_OUTPUT_BYTES, 5 * 16 * 5 * 4, 16 * 5 * 4 - 1])
def test_a_dropped_step_is_left_out_before_and_after_an_interval_is_compared(monkeypatch, bound):
    monkeypatch.setattr(correct_count, "KEEP_OUTPUT_BYTES", bound)
    g = torch.Generator().manual_seed(1)
    count, expected = CorrectCount(Classification(), before=torch.tensor(7)), 7
    for step in range(3 * KEEP_BATCHES):
        mark = count.mark()
        output, target = _batch(g)
        count.add(output, target)
        if step % 5 == 0:
            count.drop_since(mark)  # skip mode leaves this step out
        else:
            expected += _alone(output, target)
        count.step_done()
    assert int(count.total()) == expected


def test_a_task_without_predictions_is_counted_each_batch():
    g = torch.Generator().manual_seed(2)
    counted = []

    class Counted:
        train_metric = "train_acc"

        def correct(self, output, target):
            counted.append(len(target))
            return Classification().correct(output, target)

    count = CorrectCount(Counted())
    output, target = _batch(g)
    count.add(output, target)
    assert counted == [16] and not count.kept and int(count.total()) == _alone(output, target)
    assert not hasattr(SequenceToSequence, "predictions")  # its count masks padding: each batch counts its own


def test_a_task_without_a_count_totals_none_or_the_resumed_part():
    class NoCount:
        train_metric = None

        def correct(self, output, target):
            return None

    count = CorrectCount(NoCount())
    count.add(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    count.step_done()
    assert count.total() is None
    assert int(CorrectCount(NoCount(), before=torch.tensor(4)).total()) == 4
