"""Dynamic batch scheduling: adaptive gradient accumulation driven by the gradient noise scale.

McCandlish et al. 2018 ("An empirical model of large-batch training"): the simple noise scale
B_simple = tr(Σ)/|G|² (Σ: per-sample gradient covariance, G: true gradient) predicts the critical batch
size, beyond which a bigger batch buys little. From squared gradient norms at two batch sizes b < B:

    |G|²  ≈ (B |G_B|² − b |G_b|²) / (B − b)        tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

Here b is one micro-batch and B the k accumulated micro-batches of a step. The loop's gradients hold
the running sum after each micro-batch, so micro-batch i's mean gradient is k·(S_i − S_{i−1}) (equal
micro-batches; a short last step of an epoch is left out). Working in micro-batch units (b = 1, B = k)
gives the noise scale in micro-batches directly, so k can follow it without knowing the batch size.
Each per-step estimate is noisy, so |G|² and tr(Σ) are smoothed SEPARATELY with EMAs and only then
divided. Everything stays on the device; the host reads the EMAs every ``update_every`` steps to pick
k in [k_min, k_max] (never more than doubling or halving at once).

lr rule: the configured lr is for the configured batch (k = 1); at k micro-batches the lr is
``base_lr * k ** p`` with p = 0.5 ("sqrt", the square-root rule suited to Adam; Malladi et al. 2022),
1 ("linear", Goyal et al. 2017, for SGD) or 0 ("none"). It is written to ``state.base_lr`` so a
schedule (WarmupCosine) shapes it further; list this technique before the schedule.
"""
from __future__ import annotations

from typing import Any

import torch

from leantrain._torch_private import foreach_copy_, foreach_norm, foreach_sub
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register

LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}


def noise_scale_terms(small_sq: Any, big_sq: Any, b: float, big_b: float) -> tuple[Any, Any]:
    """Unbiased |G|² and tr(Σ) from squared gradient norms at batch sizes b < B (floats or tensors)."""
    true_sq = (big_b * big_sq - b * small_sq) / (big_b - b)
    trace = (small_sq - big_sq) / (1.0 / b - 1.0 / big_b)
    return true_sq, trace


def choose_accum_steps(noise_scale_micro: float, k_now: int, k_min: int, k_max: int) -> int:
    """k nearest the noise scale (in micro-batches), within [k_min, k_max] and a factor 2 of k_now."""
    if noise_scale_micro != noise_scale_micro:  # NaN: no usable estimate, keep k
        return k_now
    # inf when the |G|² estimate is <= 0 (all noise); <= 0 when no noise was detected
    target = k_max if noise_scale_micro >= k_max else max(1, round(noise_scale_micro))
    return int(max(k_min, min(k_max, 2 * k_now, max(k_now // 2, target))))


def _at_least_two(accum_max: int) -> int:
    if accum_max < 2:
        raise ValueError(f"accum_max must be >= 2 (adaptive accumulation needs two batch sizes), got {accum_max}")
    return accum_max


@register
class AdaptiveAccumulation(Technique):
    name = "accumulation"
    summary = "adaptive gradient accumulation: micro-batches per step follow the gradient noise scale (McCandlish 2018)"
    options = (
        Option("accumulation", str, "off",
               "gradient accumulation: off, or adaptive (k micro-batches per step follows the gradient noise scale)",
               choices=("off", "adaptive")),
        Option("accum_max", int, 16, "adaptive accumulation: most micro-batches per optimizer step (least is 2)", check=_at_least_two),
        Option("lr_scaling", str, "sqrt", "adaptive accumulation: lr = lr * k**p, p = 0.5 (sqrt), 1 (linear), 0 (none)",
               choices=tuple(LR_SCALINGS)),
    )
    runs_after = ("complexity",)  # scales the lr of the optimizer complexity matching may replace
    # The noise scale needs whole gradients per micro-batch: not one FSDP shard's, and the pipeline owns micro-batching.
    parallel_modes = frozenset({"none", "ddp", "mpi", "ensemble"})

    @classmethod
    def from_config(cls, config: Any) -> AdaptiveAccumulation | None:
        if config.accumulation != "adaptive":
            return None
        batch = config.batch_size if isinstance(config.batch_size, int) else None  # auto: chosen at the run's start
        return cls(k_max=config.accum_max, lr_scaling=config.lr_scaling, micro_batch_size=batch)

    def __init__(
        self, k_min: int = 2, k_max: int = 16, lr_scaling: str = "sqrt", ema: float = 0.95,
        update_every: int = 10, micro_batch_size: int | None = None,
    ):
        if not 2 <= k_min <= k_max:
            raise ValueError(f"need 2 <= k_min <= k_max (two batch sizes per step), got {k_min}, {k_max}")
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling {lr_scaling!r} is not one of: {', '.join(LR_SCALINGS)}")
        self.k_min, self.k_max, self.lr_scaling, self.ema = k_min, k_max, lr_scaling, ema
        self.sets_lr = lr_scaling != "none"  # the lr follows k unless its scaling is none
        self.update_every, self.micro_batch_size = update_every, micro_batch_size
        self.k = k_min
        self.original_lr: float | None = None
        self._ema_true_sq = torch.zeros(())  # EMA of |G|² (per-micro-batch-mean units); on the device from on_fit_start
        self._ema_trace = torch.zeros(())  # EMA of tr(Σ) in micro-batch units
        self._steps_since_update = 0
        self._estimates = 0
        self._prev: list[torch.Tensor] | None = None
        self._delta_sq: torch.Tensor | None = None
        self._micro = self._seen = 0  # micro-batches in the estimate; seen in this step
        self._epoch_micro = self._epoch_steps = 0

    def describe(self) -> str:
        return f"accum-adaptive{self.k_min}-{self.k_max}"

    def lr_factor(self, k: int) -> float:
        return float(k) ** LR_SCALINGS[self.lr_scaling]

    def _apply_k(self, state: StepState) -> None:
        assert self.original_lr is not None, "set in on_fit_start"
        state.accum_steps = self.k
        state.base_lr = self.original_lr * self.lr_factor(self.k)
        state.set_lr(state.base_lr)

    def on_fit_start(self, state: StepState) -> None:
        if self.original_lr is None:
            self.original_lr = state.base_lr
        self._ema_true_sq = self._ema_true_sq.to(state.device)  # no copy when restored onto it already
        self._ema_trace = self._ema_trace.to(state.device)
        self._apply_k(state)

    def noise_scale_micro(self) -> float | None:
        """Smoothed B_simple in micro-batches (host sync); None before the first estimate."""
        if not self._estimates:
            return None
        true_sq, trace = float(self._ema_true_sq), float(self._ema_trace)
        return trace / true_sq if true_sq > 0 else float("inf")

    def before_step(self, state: StepState) -> None:
        self._micro, self._delta_sq = 0, None
        if self._steps_since_update >= self.update_every and self._estimates:
            self._steps_since_update = 0
            noise_scale = self.noise_scale_micro()
            assert noise_scale is not None, "there are estimates"
            self.k = choose_accum_steps(noise_scale, self.k, self.k_min, self.k_max)
            self._apply_k(state)

    def after_micro_backward(self, state: StepState, micro_index: int) -> None:
        self._seen = micro_index + 1
        if state.dist.world_size > 1 and micro_index == state.accum_steps - 1:
            return  # DDP has just averaged the gradients over ranks: this micro-batch's own part is gone
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        if micro_index == 0:
            if self._prev is None or [g.shape for g in grads] != [p.shape for p in self._prev]:
                self._prev = [g.detach().clone() for g in grads]  # first step, or the model was resized
            else:
                foreach_copy_(self._prev, grads)
            self._delta_sq = _sum_sq(grads)
        else:
            assert self._prev is not None and self._delta_sq is not None, "micro-batch 0 set them"
            deltas = foreach_sub(grads, self._prev)
            self._delta_sq = self._delta_sq + _sum_sq(deltas)
            foreach_copy_(self._prev, grads)
        self._micro += 1

    def before_optimizer_step(self, state: StepState) -> None:
        self._epoch_micro += self._seen
        self._epoch_steps += 1
        n, world = state.accum_steps, state.dist.world_size
        if n < 2 or self._micro != (n if world == 1 else n - 1):  # a short last step: micro-batch sizes may differ
            return
        assert self._delta_sq is not None, "after_micro_backward set it"
        # Gradients are unscaled now; the micro-batch deltas were taken under the loss scale.
        scale = state.precision.scale_tensor()
        scale_sq = scale.double() ** 2 if scale is not None else 1.0
        # Micro-batch i's mean gradient is n·Δ_i. On several ranks, each rank's first n-1 micro-batches are
        # its own (DDP's no_sync), and B is every micro-batch of every rank: b = 1, B = n·world.
        if world == 1:
            small_sq = n * self._delta_sq.double() / scale_sq  # mean over i of |n·Δ_i|²
        else:
            small_sq = n * n * state.dist.all_reduce_(self._delta_sq.double()) / (world * self._micro) / scale_sq
        big_sq = _sum_sq([p.grad for p in state.model.parameters() if p.grad is not None]).double()
        true_sq, trace = noise_scale_terms(small_sq, big_sq, 1.0, float(n * world))
        # In units of a global micro-batch (one micro-batch on every rank), which is what k counts.
        trace = trace / world
        ok = torch.isfinite(true_sq) & torch.isfinite(trace)  # fp16 overflow steps are skipped, not averaged
        a = self.ema
        self._ema_true_sq = torch.where(ok, a * self._ema_true_sq + (1 - a) * true_sq.to(self._ema_true_sq), self._ema_true_sq)
        self._ema_trace = torch.where(ok, a * self._ema_trace + (1 - a) * trace.to(self._ema_trace), self._ema_trace)
        self._estimates += 1
        self._steps_since_update += 1

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        b_micro = self.noise_scale_micro()
        record["noise_scale_microbatches"] = b_micro
        if self.micro_batch_size and b_micro is not None:
            record["noise_scale"] = b_micro * self.micro_batch_size * state.dist.world_size  # in samples
        record["accum_steps_mean"] = self._epoch_micro / self._epoch_steps if self._epoch_steps else None
        self._epoch_micro = self._epoch_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "k": self.k, "original_lr": self.original_lr, "estimates": self._estimates,
            "steps_since_update": self._steps_since_update,
            "ema_true_sq": self._ema_true_sq.cpu(), "ema_trace": self._ema_trace.cpu(),
            "epoch_micro": self._epoch_micro, "epoch_steps": self._epoch_steps,  # a mid-epoch checkpoint's partial mean
        }

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        self.k, self.original_lr = saved["k"], saved["original_lr"]
        self._estimates, self._steps_since_update = saved["estimates"], saved["steps_since_update"]
        self._ema_true_sq = saved["ema_true_sq"].to(state.device)
        self._ema_trace = saved["ema_trace"].to(state.device)
        self._epoch_micro, self._epoch_steps = saved.get("epoch_micro", 0), saved.get("epoch_steps", 0)


def _sum_sq(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(foreach_norm(tensors)).float().pow(2).sum()
