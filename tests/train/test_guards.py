"""The full non-finite check (skip mode reads it every step): exact, leaves the gradients as they were, and
forgets a flag once read."""
import math

import pytest
import torch

from leantrain.errors import TrainingDiverged
from leantrain.train import guards
from leantrain.train.guards import NonFiniteGuard

CPU = torch.device("cpu")


def _grads():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 16, generator=g), torch.randn(16, generator=g).double(), torch.randn(3, generator=g).bfloat16()]


@pytest.mark.parametrize("where", [0, 1, 2])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_any_bad_gradient_in_any_dtype_is_found_and_the_next_clean_step_passes(where, value):
    guard = NonFiniteGuard("stop", CPU, 1, scaler_checks_grads=False)
    loss = torch.tensor(1.5)
    grads = _grads()
    before = [g.clone() for g in grads]
    assert guard.finite_now(loss, grads)
    assert all(torch.equal(a, b) for a, b in zip(before, grads))  # checked, not changed (the kernel scales by 1)
    grads[where].view(-1)[-1] = value
    assert not guard.finite_now(loss, grads)
    grads[where].view(-1)[-1] = 0.0
    assert guard.finite_now(loss, grads)  # the flag was reset after it was read


def test_a_bad_loss_or_a_bad_sparse_gradient_is_found():
    guard = NonFiniteGuard("stop", CPU, 1, scaler_checks_grads=False)
    assert not guard.finite_now(torch.tensor(math.nan), _grads())
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, math.inf], (4,), check_invariants=True)
    assert not guard.finite_now(torch.tensor(1.0), [*_grads(), sparse])
    assert guard.finite_now(torch.tensor(1.0), [torch.sparse_coo_tensor([[1]], [2.0], (4,), check_invariants=True)])


def test_under_a_loss_scaler_only_the_loss_is_read():
    guard = NonFiniteGuard("stop", CPU, 1, scaler_checks_grads=True)  # the scaler finds (and skips) bad gradients
    assert guard.finite_now(torch.tensor(1.0), [torch.tensor([math.nan])])
    assert not guard.finite_now(torch.tensor(math.inf), [])


def test_an_older_checkpoint_without_the_newer_settings_still_matches():
    from leantrain.config import RunConfig
    from leantrain.train.run_identity import differing_keys

    now = RunConfig().to_dict()
    older = {k: v for k, v in now.items() if k not in ("label_smoothing", "length_buckets", "lr_batch")}
    assert differing_keys(older, now) == [] and differing_keys({**older, "lr": 0.5}, now) == ["lr"]
    assert differing_keys(older, {**now, "label_smoothing": 0.1}) == ["label_smoothing"]


def test_weights_in_fp16_whose_norm_overflows_are_still_finite():
    from leantrain.train.guards import _all_finite

    big = torch.full((1000,), 60000.0, dtype=torch.float16)  # each finite; the norm is ~1.9e6 > fp16's max
    assert _all_finite([big, torch.ones(3)]) and not _all_finite([big, torch.tensor([math.nan])])
    big[0] = math.inf
    assert not _all_finite([big])


class _TwoRanks:
    """Rank 0's view of a two-rank world: ``max`` meets the other rank's values (its first bad step, as the guard
    sends it) and records every collective."""

    world_size = 2

    def __init__(self, other_bad_step: int | None):
        self.other, self.calls = other_bad_step, 0

    def max(self, values):
        self.calls += 1
        theirs = [-self.other if self.other else -math.inf, 1.0 if self.other else 0.0]
        return [max(a, b) for a, b in zip(values, theirs)]


def _cpu_state(dist, step):
    from types import SimpleNamespace

    weight = torch.nn.Parameter(torch.ones(3))
    return SimpleNamespace(step=step, epoch=0, dist=dist, optimizer=torch.optim.SGD([weight], lr=0.1))


@pytest.mark.parametrize("mine, theirs, stop", [(5, None, 5), (None, 3, 3), (7, 4, 4), (None, None, None)])
def test_several_cpu_ranks_read_the_loss_on_the_host_and_agree_on_the_first_bad_step(mine, theirs, stop):
    # No gradient pass per step on the CPU: each rank notes its first bad loss; at the interval the ranks take the
    # smallest, in one collective, and all stop there.
    dist = _TwoRanks(theirs)
    guard = NonFiniteGuard("stop", CPU, 2, scaler_checks_grads=False)
    for step in range(1, 9):
        guard.note(_cpu_state(dist, step - 1), torch.tensor(math.nan if step == mine else 1.0))
    assert dist.calls == 0  # nothing is exchanged between the intervals
    if stop is None:
        guard.check(_cpu_state(dist, 8))
    else:
        with pytest.raises(TrainingDiverged, match=rf"at step {stop} \(epoch 1\)"):
            guard.check(_cpu_state(dist, 8))
    assert dist.calls == 1


@pytest.mark.parametrize("min_interval_s, reads", [(3600.0, 0), (0.0, 1)])
def test_one_process_reads_its_losses_at_the_interval_only_when_its_last_read_is_old_enough(
        monkeypatch, min_interval_s, reads):
    monkeypatch.setattr(guards, "MIN_READ_INTERVAL_S", min_interval_s)
    guard = NonFiniteGuard("stop", CPU, 1, scaler_checks_grads=False)
    for step in range(guards.DEVICE_CHECK_EVERY):
        guard.note(_cpu_state(None, step), torch.tensor(1.0))
    assert len(guard.kept_losses) == guards.DEVICE_CHECK_EVERY * (1 - reads)  # a read empties them


def test_ranks_read_together_at_the_interval_however_recent_their_last_read(monkeypatch):
    """Each rank's clock differs: spacing reads by time would leave one rank in the collective alone."""
    monkeypatch.setattr(guards, "MIN_READ_INTERVAL_S", 3600.0)
    dist = _TwoRanks(None)
    guard = NonFiniteGuard("stop", CPU, 2, scaler_checks_grads=False)
    for step in range(guards.DEVICE_CHECK_EVERY):
        guard.note(_cpu_state(dist, step), torch.tensor(1.0))
    assert dist.calls == 1 and not guard.kept_losses
