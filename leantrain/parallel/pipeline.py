"""Pipeline (model) parallelism on ``torch.distributed.pipelining``, and data x pipeline hybrids.

The model's ``pipeline_parts()`` (what runs before the blocks, the blocks, what runs after) is cut into
contiguous stages, one per rank of a pipeline. Stages are balanced by forward FLOPs per block (the
conv/linear work, counted on the meta device): a stage's time is its compute, and parameter counts
would misplace conv nets, whose early blocks hold few weights but most of the work. Parameters are
the fallback when no block has conv/linear work.

PyTorch's schedules (GPipe, 1F1B) run each batch as micro-batches; the loss is computed on the last
stage and its value sent to the other stages of the pipeline (one scalar per step), so every rank
records the same numbers. Under a hybrid ``dpAxppB`` a 2-D DeviceMesh (dp, pp) holds A replicas of a
B-stage pipeline; each replica takes its slice of every batch and the stage's gradients are averaged
over its replicas (one all-reduce per step) before the optimizer step.

A pipeline stage allocates its receive buffers for one micro-batch shape, so a batch of another size
(the epoch's last, or a validation batch) gets a stage and schedule of its own, cached by size.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.distributed.pipelining.schedules import PipelineScheduleSingle

from leantrain.data.dataset import Dataset
from leantrain.data.streaming import head, to_device
from leantrain.errors import UsageError
from leantrain.models import flops_per_sample
from leantrain.models.common import flops_by_layer
from leantrain.parallel.dist import Dist, flat_average_
from leantrain.parallel.plan import DRY_SAMPLES, ParallelPlan, StageShare

SCHEDULES: dict[str, type[PipelineScheduleSingle]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def pipeline_parts(model: nn.Module) -> tuple[nn.Module, nn.Sequential | nn.ModuleList, nn.Module]:
    parts = getattr(model, "pipeline_parts", None)
    if not callable(parts):
        raise UsageError(f"--parallel pipeline splits a model into stages of its blocks, and {type(model).__name__} "
                         "has no pipeline_parts() (models that do: mlp, cnn, vgg11, resnet18, resnet50, "
                         "conv-autoencoder); use --parallel ddp or fsdp")
    before, blocks, after = parts()
    return before, blocks, after


def block_costs(model: nn.Module, sample_shape: tuple[int, ...]) -> tuple[list[float], str]:
    """Each block's share of the work, with the parts before and after the blocks on the first and last."""
    before, blocks, after = pipeline_parts(model)
    flops = flops_by_layer(model, sample_shape)
    measure = "flops"

    def cost(module: nn.Module) -> float:
        return sum(flops.get(m, 0.0) for m in module.modules())

    costs = [cost(block) for block in blocks]
    if not any(costs):
        measure = "params"
        costs = [float(sum(p.numel() for p in block.parameters())) for block in blocks]
        before_cost, after_cost = (float(sum(p.numel() for p in m.parameters())) for m in (before, after))
    else:
        before_cost, after_cost = cost(before), cost(after)
    if costs:
        costs[0] += before_cost
        costs[-1] += after_cost
    return costs, measure


def balanced_split(costs: list[float], stages: int) -> list[range]:
    """Contiguous ranges of blocks, one per stage, minimising the largest stage's cost (exact, by dynamic
    programming over the prefix sums; a few hundred blocks at most)."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise UsageError(f"{stages} pipeline stages need at least {stages} blocks; the model has {n}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    # best[k][i]: the smallest possible largest-stage cost of blocks[:i] in k stages; cut[k][i]: where the last begins
    best = [[math.inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    bounds, i = [], n
    for k in range(stages, 0, -1):
        bounds.append(range(cut[k][i], i))
        i = cut[k][i]
    return bounds[::-1]


class StageModule(nn.Module):
    """One pipeline stage: the part before the blocks (first stage), its blocks, the part after (last stage).

    ``blocks`` keeps the zoo's convention (an ``nn.Sequential`` called as one), so activation checkpointing works on a
    stage as on a model, in segments.
    ``flops_per_sample`` is the whole model's: rates are per sample of the whole pipeline, and the
    capacity they are measured against is every stage's peak together.
    """

    def __init__(self, before: nn.Module | None, blocks: list[nn.Module], after: nn.Module | None, model_flops: float | None):
        super().__init__()
        self.before = before or nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.after = after or nn.Identity()
        self._model_flops = model_flops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.blocks(self.before(x)))

    def flops_per_sample(self) -> float | None:
        return self._model_flops


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


class PipelinePlan(ParallelPlan):
    """``dp`` replicas of a ``pp``-stage pipeline over ``dp * pp`` ranks (dp = 1: a plain pipeline)."""

    holds_whole_model = False
    stage_only = True

    def __init__(self, dist: Dist, dp: int, pp: int, microbatches: int, schedule: str):
        super().__init__(dist)
        if dist.world_size != dp * pp:
            raise UsageError(f"dp{dp}xpp{pp} needs {dp * pp} processes, but {dist.world_size} were launched")
        if pp < 2:
            raise UsageError(f"a pipeline needs at least 2 stages (processes), got {pp}")
        self.dp, self.pp, self.microbatches, self.schedule_name = dp, pp, microbatches, schedule
        # Ranks r = replica * pp + stage: a replica's stages are neighbouring ranks (on one node, if they fit).
        mesh = init_device_mesh(dist.device.type, (dp, pp), mesh_dim_names=("dp", "pp"))
        self.pp_group, self.dp_group = mesh.get_group("pp"), mesh.get_group("dp")
        self.stage_index = mesh.get_local_rank("pp")
        self.is_first, self.is_last = self.stage_index == 0, self.stage_index == pp - 1
        self.last_stage_rank = torch_dist.get_global_rank(self.pp_group, pp - 1)
        self.data_dist = dist.within(self.dp_group)
        self._names: dict[int, str] = {}  # id(tensor) -> the whole model's name for it
        self._schedules: dict[tuple[int, bool], PipelineScheduleSingle] = {}
        self._state: Any = None
        self._loss_fn: Any = None  # this step's loss, set per step (the divisor changes with the batch)
        self._split: list[range] = []
        self._measure = ""
        self._model_params = 0
        self._dry_inputs: torch.Tensor | None = None

    def prepare(self, model: nn.Module, dataset: Dataset) -> nn.Module:
        costs, self._measure = block_costs(model, tuple(dataset.input_shape))
        self._split = balanced_split(costs, self.pp)
        before, blocks, after = pipeline_parts(model)
        mine = self._split[self.stage_index]
        stage = StageModule(before if self.is_first else None, [blocks[i] for i in mine],
                            after if self.is_last else None, flops_per_sample(model))
        self._names = {id(t): name for name, t in _named_tensors(model)}
        self._model_params = sum(p.numel() for p in model.parameters())
        missing = [name for name, t in _named_tensors(stage) if id(t) not in self._names]
        if missing:  # a part built on the fly (not a submodule of the model) would not be saved
            raise UsageError(f"{type(model).__name__}.pipeline_parts() returns modules that are not the model's own "
                             f"({missing[0]}); return its submodules")
        if not self.is_first:  # what the earlier stages will send, while this rank still holds them
            self._dry_inputs = _upstream_output([before, *list(blocks)[: mine.start]], dataset, self.dist.device)
        return stage

    def stage_share(self) -> StageShare:
        """The memory estimate's view of this stage: 1F1B holds at most (stages - this stage's index) micro-batches'
        activations at once (its warm-up forwards), GPipe all of them (every forward before any backward)."""
        one_f_one_b = self.schedule_name == "1f1b" and self.microbatches >= self.pp  # as _schedule chooses
        in_flight = min(self.microbatches, self.pp - self.stage_index) if one_f_one_b else self.microbatches
        return StageShare(self._dry_inputs, self.is_last, self.microbatches, in_flight)

    def attach(self, state: Any) -> None:
        self._state = state
        state.forward_backward = self.forward_backward
        state.eval_forward = self.eval_forward
        if self.dp > 1:
            state.sync_gradients = self.average_gradients

    # --- the loop's hooks ---
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor,
                         loss_divisor: float | int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch through the schedule; the batch's summed loss (detached) and correct units (None where the
        task counts none), on every stage of the pipeline."""
        state = self._state
        schedule = self._schedule(len(y), training=True)
        correct: list[torch.Tensor] = []

        def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # Each micro-batch's loss is its share of the step's mean (fp16's loss scaler is refused: the stages
            # would each decide to skip).
            with torch.no_grad():
                counted = state.task.correct(output, target)
            if counted is not None:
                correct.append(counted)
            return state.task.loss_sum(output, target) / loss_divisor

        self._loss_fn = loss_fn
        losses: list[torch.Tensor] = []
        with state.precision.autocast():
            if self.is_first:
                schedule.step(x)
            elif self.is_last:
                schedule.step(target=y, losses=losses)
            else:
                schedule.step()
        # The schedule reports exactly the losses it back-propagated (shape inference may call loss_fn once more:
        # the correct counts are taken from the last len(losses) calls).
        totals = torch.zeros(2, device=state.device)
        if losses:
            totals[0] = torch.stack(losses).sum().detach().float() * loss_divisor
            totals[1] = torch.stack(correct[-len(losses):]).sum().float() if correct else 0.0
        torch_dist.broadcast(totals, src=self.last_stage_rank, group=self.pp_group)
        return totals[0], (totals[1] if state.task.train_metric else None)

    @torch.no_grad()
    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole model's output for ``x``, on every stage of the pipeline (sent from the last)."""
        schedule = self._schedule(len(x), training=False)
        output = schedule.eval(x) if self.is_first else schedule.eval()
        shape = [list(output.shape) if self.is_last else None]  # the other stages learn it from the last
        torch_dist.broadcast_object_list(shape, src=self.last_stage_rank, group=self.pp_group)
        output = output.float().contiguous() if self.is_last else torch.empty(shape[0] or [], device=x.device)
        torch_dist.broadcast(output, src=self.last_stage_rank, group=self.pp_group)
        return output

    def average_gradients(self) -> None:
        """Hybrid: the mean of the stage's gradients over its data-parallel replicas (one flat all-reduce)."""
        flat_average_([p.grad for p in self._state.model.parameters() if p.grad is not None], self.data_dist)

    def _schedule(self, batch: int, training: bool) -> PipelineScheduleSingle:
        """The schedule for batches of this size: as many micro-batches as asked, or the most that divide it."""
        key = (batch, training)
        if key not in self._schedules:
            state = self._state
            stage = PipelineStage(state.model, self.stage_index, self.pp, state.device, group=self.pp_group)
            micro = _largest_divisor_at_most(batch, self.microbatches)
            loss_fn = (lambda output, target: self._loss_fn(output, target)) if training else None
            # 1F1B needs a micro-batch per stage at least; a batch that cannot give that (an odd-sized last
            # batch), and validation (no backward to interleave), run GPipe's all-forward-then-backward.
            name = self.schedule_name if training and micro >= self.pp else "gpipe"
            self._schedules[key] = SCHEDULES[name](stage, micro, loss_fn=loss_fn, scale_grads=False)
        return self._schedules[key]

    # --- checkpoints: the whole model under its own names, gathered on the main rank ---
    def model_state(self, module: nn.Module) -> dict[str, Any]:
        mine = {self._names[id(t)]: t.detach().cpu() for _, t in _named_tensors(module, state_dict=True)}
        # One replica's stages hold the whole model; the replicas agree, so take replica 0's.
        gathered = self.dist.gather(mine if self.dist.rank < self.pp else {})
        return {name: t for part in gathered for name, t in part.items()} if self.dist.is_main else {}

    def load_model_state(self, module: nn.Module, saved: dict[str, Any]) -> None:
        own = {name: self._names[id(t)] for name, t in _named_tensors(module, state_dict=True)}
        missing = sorted(set(own.values()) - set(saved))
        if missing:
            raise UsageError(f"the checkpoint lacks {missing[0]} (and {len(missing) - 1} more) of this model; "
                             "load it into the model it was written with")
        module.load_state_dict({name: saved[whole] for name, whole in own.items()})

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        return self.dist.gather(optimizer.state_dict())  # each stage's own, in rank order

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        optimizer.load_state_dict(saved[self.dist.rank])

    def record(self) -> dict[str, Any]:
        return {
            "params": self._model_params,
            "pipeline": {"stages": self.pp, "replicas": self.dp, "microbatches": self.microbatches,
                         "schedule": self.schedule_name, "balanced_by": self._measure,
                         "blocks_per_stage": [len(r) for r in self._split]},
        }


@torch.no_grad()
def _upstream_output(parts: list[nn.Module], dataset: Dataset, device: torch.device) -> torch.Tensor:
    """The output of what runs before a stage (the model's first part, the earlier stages' blocks) on the first
    ``DRY_SAMPLES`` training samples, in eval mode (no dropout draw, no batch-norm update)."""
    modes = [(m, m.training) for part in parts for m in part.modules()]
    x = to_device(head(dataset.x_train, DRY_SAMPLES), device)
    try:
        for part in parts:
            x = part.eval()(x)
    finally:
        for module, training in modes:
            module.training = training
    return x.detach().clone()


def _named_tensors(module: nn.Module, state_dict: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers by name (a shared tensor under each of its names), or the state dict's entries."""
    if state_dict:
        return list(module.state_dict(keep_vars=True).items())
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
