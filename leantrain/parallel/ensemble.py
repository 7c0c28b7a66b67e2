"""A different model per worker, trained at once on the same data, their predictions combined ("meta-learners",
seed 003's future work): ``--parallel ensemble --members mlp,mlp:hidden=256,cnn`` (one member per rank; without
``--members``, every rank trains ``--model`` from its own seed).

Members never exchange gradients; each trains alone on the whole training split, with its own
initialisation and batch order (seed + rank). At every epoch end each member predicts the validation
split, the class probabilities are gathered on every rank, and two combiners are scored:
  - average: the mean of the members' probabilities, scored on the whole validation split; it becomes the
    run's headline metric (val_acc, val_loss) so that time-to-target and speedups speak of the ensemble;
  - stacked: a logistic regression on the members' log-probabilities, fitted on one half of the validation
    split (a fixed, seeded half) and scored on the other half, which it never sees; the average and the
    best member are scored on that same half beside it, for a fair comparison.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from leantrain.errors import UsageError
from leantrain.parallel.dist import Dist
from leantrain.parallel.plan import ModeHooks
from leantrain.techniques.base import StepState


def split_members(members: str) -> list[str]:
    """'mlp,mlp:hidden=256,depth=2,cnn' -> ['mlp', 'mlp:hidden=256,depth=2', 'cnn']: a piece with '=' is an
    option of the member before it; any other piece starts a new member."""
    specs: list[str] = []
    for piece in (p.strip() for p in members.split(",")):
        if not piece:
            raise UsageError(f"--members {members!r}: an empty member; write NAME[:key=value,...],NAME...")
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def member_spec(model: str, members: str | None, rank: int, world_size: int) -> str:
    if not members:
        return model
    specs = split_members(members)
    if len(specs) != world_size:
        raise UsageError(f"--members names {len(specs)} models ({', '.join(specs)}) for {world_size} workers; "
                         "give one member per worker")
    return specs[rank]


def stacking_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint validation indices: (fit the meta-learner on these, score it on those)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + 17))
    return order[: n // 2], order[n // 2 :]


def stacked_accuracy(log_probs: list[torch.Tensor], y: torch.Tensor, fit_idx: torch.Tensor,
                     score_idx: torch.Tensor) -> float:
    """Logistic regression on the members' concatenated log-probabilities: fitted on fit_idx only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = torch.cat(log_probs, dim=1).numpy()
    labels = y.numpy()
    # Log-probabilities are badly scaled (down to -30): unscaled, lbfgs took hundreds to thousands of iterations,
    # up to a minute an epoch on gpt3-sim's 10,000 x 40 features (17 iterations, 0.2 s, standardised; same score).
    learner = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    learner.fit(features[fit_idx.numpy()], labels[fit_idx.numpy()])
    return float(learner.score(features[score_idx.numpy()], labels[score_idx.numpy()]))


def _accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return int((probs.argmax(dim=1) == y).sum()) / len(y) if len(y) else math.nan  # a count, as the members' are


class EnsembleMember(ModeHooks):
    """This rank's member: at each epoch end, gather every member's validation probabilities and combine them."""

    name = "ensemble"
    parallel_modes = frozenset({"ensemble"})

    def __init__(self, world: Dist, member: str, x_val: torch.Tensor, y_val: torch.Tensor, eval_batch_size: int,
                 seed: int):
        self.world, self.member = world, member
        self.x_val, self.y_val, self.eval_batch_size, self.seed = x_val, y_val, eval_batch_size, seed

    def describe(self) -> str:
        return "ensemble"

    @torch.no_grad()
    def _log_probs(self, state: StepState) -> torch.Tensor:
        state.model.eval()
        forward = state.eval_forward or state.forward
        out = []
        for start in range(0, len(self.x_val), self.eval_batch_size):
            with state.precision.autocast():
                logits = forward(self.x_val[start : start + self.eval_batch_size])
            out.append(F.log_softmax(logits.float(), dim=1).cpu())
        return torch.cat(out)

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        mine = {"model": self.member, "val_acc": record.get("val_acc"), "val_loss": record.get("val_loss"),
                "time_s": record["time_s"]}
        members = self.world.gather(mine)
        log_probs = self.world.gather(self._log_probs(state))
        y = self.y_val.cpu()
        mean_probs = torch.stack([lp.exp() for lp in log_probs]).mean(dim=0)
        fit_idx, score_idx = stacking_split(len(y), self.seed)
        start = time.perf_counter()
        # One meta-learner, fitted by rank 0 and shared: every rank fitting its own copy competed for the same cores.
        stacked = self.world.broadcast(stacked_accuracy(log_probs, y, fit_idx, score_idx) if self.world.rank == 0 else None)
        stacking_s = time.perf_counter() - start
        on_score = [_accuracy(lp[score_idx].exp(), y[score_idx]) for lp in log_probs]
        record["members"] = members
        record["ensemble"] = {
            "average_acc": _accuracy(mean_probs, y),
            "best_member_acc": max(m["val_acc"] for m in members),
            "stacked_acc_on_held_out_half": stacked,
            "stacking_s": stacking_s,
            "average_acc_on_held_out_half": _accuracy(mean_probs[score_idx], y[score_idx]),
            "best_member_acc_on_held_out_half": max(on_score),
            "stack_fit_samples": len(fit_idx), "stack_score_samples": len(score_idx),
            "wall_time_s": max(m["time_s"] for m in members),
            "members_time_sum_s": sum(m["time_s"] for m in members),
        }
        # The run's headline metric is the ensemble's: time-to-target and speedups then speak of it.
        record["member_val_acc"], record["member_val_loss"] = record.get("val_acc"), record.get("val_loss")
        record["member_time_s"], record["time_s"] = record["time_s"], record["ensemble"]["wall_time_s"]
        record["val_acc"] = record["ensemble"]["average_acc"]
        record["val_loss"] = float(F.nll_loss(mean_probs.clamp_min(1e-12).log(), y))
