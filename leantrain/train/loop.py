"""The step and epoch loop. It fires the techniques' events and measures; it knows no technique by name.

Events fire in this order, here and nowhere else: ON_FIT_START; per epoch, per optimizer step: BEFORE_STEP,
AFTER_MICRO_BACKWARD per micro-batch, BEFORE_OPTIMIZER_STEP, AFTER_OPTIMIZER_STEP; ON_EPOCH_END after
validation; ON_FIT_END. One optimizer step: draw ``state.accum_steps`` micro-batches -> forward under
``state.precision.autocast()`` -> loss summed over units / units in the whole step -> backward through the precision's loss scaler ->
unscale -> BEFORE_OPTIMIZER_STEP (gradients final) -> optimizer step through the scaler -> counters.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from leantrain.data.batches import BatchSource, sequential_batches
from leantrain.data.streaming import StreamVal
from leantrain.models import flops_per_sample
from leantrain.parallel.dist import Dist
from leantrain.techniques.base import Event, Technique, fire
from leantrain.train.guards import Guards
from leantrain.train.loggers import NO_LOG, StepLog
from leantrain.train.metrics import ForeignCpuMeter, SavedTensorMeter, now, state_bytes
from leantrain.train.progress import Progress
from leantrain.train.state import EpochProgress, TrainState


def train(
    state: TrainState,
    batches: BatchSource,
    val_x: torch.Tensor | StreamVal,
    val_y: torch.Tensor,
    *,
    techniques: list[Technique],
    eval_batch_size: int,
    progress: Progress,
    on_epoch_saved: Callable[[TrainState], None] = lambda state: None,
    checkpoint_every: tuple[int | None, float | None] = (None, None),
    log: StepLog = NO_LOG,
) -> None:
    """Train from ``state.epoch`` to ``state.total_epochs``; each finished epoch appends to ``state.records``.

    ``on_epoch_saved`` writes a checkpoint: after each epoch, and mid-epoch every ``checkpoint_every``
    (steps, seconds) with ``state.progress`` holding the unfinished epoch. ``log`` receives every step and epoch
    (``--log``; see loggers.py)."""
    fire(techniques, Event.ON_FIT_START, state)
    guards = Guards(state, checkpoint_every, on_epoch_saved)
    first_epoch_of_process = True
    measured: tuple[int, int] | None = None  # the model whose activation memory was last measured
    activation_bytes = 0
    while state.epoch < state.total_epochs and not state.stop_training:
        # The saved-tensor hooks cost time, so measure once per model (a technique may resize it).
        model_key = (id(state.model), sum(p.numel() for p in state.model.parameters()))
        measure = model_key != measured
        record = train_epoch(state, batches, techniques, progress, exclude_warmup=first_epoch_of_process,
                             measure_activations=measure, guards=guards, log=log)
        if measure:
            measured, activation_bytes = model_key, record["activation_bytes"]
        else:
            record["activation_bytes"] = activation_bytes
            if state.device.type != "cuda":
                record["peak_mem_bytes"] = record["state_bytes"] + activation_bytes
        record.update(evaluate(state, val_x, val_y, eval_batch_size))
        guards.after_validation(state, record)  # a NaN validation loss stops the run: never recorded or saved
        record.update(_overall_rates(record))
        fire(techniques, Event.ON_EPOCH_END, state, record)
        log.end_epoch(record)
        state.records.append(record)
        state.epoch += 1
        progress.epoch_done(record, state.task.metric)
        guards.save(state)
        # Only the main rank writes: the others would wait for it inside their next epoch's first step and count
        # the write as training time (one process does not). The next epoch's clocks start together instead.
        state.dist.barrier()
        first_epoch_of_process = False
    fire(techniques, Event.ON_FIT_END, state)


def train_epoch(
    state: TrainState, batches: BatchSource, techniques: list[Technique], progress: Progress, exclude_warmup: bool,
    measure_activations: bool = True, guards: Guards | None = None, log: StepLog = NO_LOG,
) -> dict[str, Any]:
    state.model.train()
    device, task = state.device, state.task
    guards = guards or Guards(state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # A mid-epoch checkpoint's epoch continues where it stopped: same sums, same next batch.
    resumed, state.progress = state.progress or EpochProgress(), None
    # Training accuracy from the forward passes the step makes anyway: an argmax and a count, no extra pass.
    # Per-step losses and counts stay on the device, added up at the epoch's end: no kernel per step for sums.
    correct_before = resumed.correct_sum
    step_correct: list[torch.Tensor] = []
    units, samples, steps, tokens = resumed.units, resumed.samples, resumed.steps, resumed.tokens
    activation_bytes, step_losses, drawn = resumed.activation_bytes, resumed.step_losses, resumed.micro_batches
    step_units_list = resumed.step_units
    micro_batches = islice(batches.epoch(state.epoch), drawn, None)
    foreign_cpu = ForeignCpuMeter()
    epoch_batches = len(batches)
    bar = progress.epoch_bar(state.epoch, state.total_epochs, epoch_batches)
    start = now(device)
    log.start_epoch()
    after_first_step = start
    first_step_samples = 0
    while True:
        fire(techniques, Event.BEFORE_STEP, state)
        step_batches = list(islice(micro_batches, state.accum_steps))
        if not step_batches:
            break
        drawn += len(step_batches)
        meter = SavedTensorMeter(list(state.model.parameters())) if steps == 0 and measure_activations else None
        step_units, step_samples, step_tokens = _count(task, step_batches)
        loss_divisor = _loss_divisor(state, step_units)
        last = len(step_batches) - 1
        corrects_before = len(step_correct)
        step_loss: torch.Tensor | None = None
        for index, (x, y) in enumerate(step_batches):
            if index < last:
                with state.no_sync():
                    loss, correct = _forward_backward(state, x, y, loss_divisor, meter)
            else:
                loss, correct = _forward_backward(state, x, y, loss_divisor, meter)
                state.sync_gradients()
            if correct is not None:
                step_correct.append(correct)
            step_loss = loss if step_loss is None else step_loss + loss  # no kernel at one micro-batch per step
            fire(techniques, Event.AFTER_MICRO_BACKWARD, state, index)
        assert step_loss is not None
        state.precision.unscale_(state.optimizer)
        log.step(state, step_loss, step_units, step_samples, step_tokens, len(step_batches))
        fire(techniques, Event.BEFORE_OPTIMIZER_STEP, state)
        if guards.before_optimizer_step(state, step_loss):  # skip mode: leave this step's update out
            state.optimizer.zero_grad(set_to_none=True)
            del step_correct[corrects_before:]
            step_units = 0  # a step of no units: its loss is left out of the epoch's
        else:
            state.precision.step(state.optimizer)
            state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        fire(techniques, Event.AFTER_OPTIMIZER_STEP, state)
        step_losses.append(step_loss)
        step_units_list.append(step_units)

        if step_tokens is not None:
            tokens = (tokens or 0) + step_tokens
        samples += step_samples
        units += step_units
        steps += 1
        state.samples_seen += step_samples
        if meter is not None:
            activation_bytes = meter.peak_bytes
        if steps - resumed.steps == 1:
            after_first_step, first_step_samples = now(device), step_samples
        bar.update(len(step_batches), step_samples)
        if drawn < epoch_batches and guards.checkpoint_due(state):  # the epoch's last step: its end saves anyway
            state.progress = EpochProgress(drawn, steps, units, samples, tokens, step_losses, step_units_list,
                                           resumed.elapsed_s + now(device) - start, activation_bytes,
                                           _total(correct_before, step_correct))
            guards.save(state)
            state.progress = None
    end = now(device)
    bar.close()
    guards.check(state)  # before the epoch is recorded (and checkpointed): no NaN epoch is ever saved

    time_s = end - start + resumed.elapsed_s
    # Throughput leaves out the process's first step (allocation, kernel selection, compilation),
    # when there is more than one step to measure; epoch time_s always counts everything.
    # Rates count this process's share of the epoch only (a mid-epoch resume's earlier part ran elsewhere).
    session_steps, session_samples = steps - resumed.steps, samples - resumed.samples
    if exclude_warmup and session_steps > 1:
        rate_time, rate_samples, rate_steps = end - after_first_step, session_samples - first_step_samples, session_steps - 1
    else:
        rate_time, rate_samples, rate_steps = end - start, session_samples, session_steps
    # Over all ranks: sums of what was processed, the slowest rank's times (one collective each per epoch).
    # A pipeline's stages saw the same samples: its data-parallel replicas' sums are the whole.
    dist = state.dist
    step_sums = torch.stack(step_losses).tolist() if step_losses else []  # one host transfer for the epoch
    loss_sum = sum(total for total, step_units in zip(step_sums, step_units_list) if step_units)
    correct_sum = _total(correct_before, step_correct)
    totals = state.data_dist.sum([loss_sum, units, samples, rate_samples, tokens or 0,
                                  float(correct_sum) if correct_sum is not None else 0.0])
    loss_total, units, samples, rate_samples = totals[0], int(totals[1]), int(totals[2]), int(totals[3])
    tokens = int(totals[4]) if tokens is not None else None
    time_s, rate_time = dist.max([time_s, rate_time])
    record: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "train_loss": (loss_total / units) if units else math.nan,
        "time_s": time_s,
        "train_steps": steps,
        "train_samples": samples,
        "train_steps_per_s": rate_steps / rate_time if rate_time > 0 else None,
        "samples_per_s": rate_samples / rate_time if rate_time > 0 else None,
        "train_tokens_per_s": tokens * rate_samples / samples / rate_time if tokens and rate_time > 0 else None,
        "train_tokens": tokens,
        "activation_bytes": activation_bytes,
        "flops_per_sample": flops_per_sample(state.model),
        "state_bytes": state_bytes(state.model, state.optimizer),
        "accum_steps": state.accum_steps,
        "lr": state.optimizer.param_groups[0]["lr"],
        "foreign_cpu_cores": _foreign_cores(dist, foreign_cpu),
        **guards.epoch_end(state, step_sums, step_units_list),
    }
    if task.train_metric:
        record[task.train_metric] = totals[5] / units if units else math.nan
    if device.type == "cuda":
        record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        record["peak_mem_bytes"] = record["state_bytes"] + activation_bytes
    return _with_rank_memory(dist, record)


def _count(task: Any, step_batches: list[tuple[Any, torch.Tensor]]) -> tuple[int, int, int | None]:
    """A step's loss units, samples and tokens (None where the task counts no tokens), in one pass."""
    units = samples = 0
    tokens: int | None = None
    for _, y in step_batches:
        units += task.units(y)
        samples += len(y)
        counted = task.tokens(y)
        if counted is not None:
            tokens = (tokens or 0) + counted
    return units, samples, tokens


def _total(before: torch.Tensor | None, counts: list[torch.Tensor]) -> torch.Tensor | None:
    """A running count kept as per-step device scalars, added up (one kernel) when it is read."""
    if not counts:
        return before
    total = torch.stack(counts).sum()
    return total if before is None else total + before


def _loss_divisor(state: TrainState, step_units: int) -> float | int:
    """What each rank divides its summed loss by, so that the gradient (DDP averages it over ranks) is the
    mean over every unit of the step on all ranks. Ranks hold equal sample counts, so where a unit is a
    sample the local count serves; token counts differ between ranks and are summed (one small collective)."""
    world = state.data_dist.world_size
    if world == 1 or getattr(state.task, "units_are_samples", False):
        return step_units
    return state.data_dist.sum([step_units])[0] / world


def _foreign_cores(dist: Dist, meter: ForeignCpuMeter) -> float | None:
    """Other processes' CPU use; on several ranks of one machine, the other ranks are not foreign."""
    if not dist.active:
        return meter.cores()
    reading = meter.split()
    ours = dist.sum([reading[1] if reading else 0.0])[0]  # every rank joins the collective
    if reading is None or dist.world.nodes > 1:
        return None
    return max(0.0, reading[0] - ours)


def _with_rank_memory(dist: Dist, record: dict[str, Any]) -> dict[str, Any]:
    if dist.active:  # each rank's own: under FSDP or a pipeline, ranks hold different parts of the model
        per_rank = [(int(a), int(b)) for a, b in dist.gather((record["peak_mem_bytes"], record["state_bytes"]))]
        record["peak_mem_bytes"], record["peak_mem_bytes_per_rank"] = max(p for p, _ in per_rank), [p for p, _ in per_rank]
        record["state_bytes_per_rank"] = [b for _, b in per_rank]
    return record


def _forward_backward(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_divisor: float | int, meter: SavedTensorMeter | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One micro-batch; returns its summed loss (detached) and its correct units (None where the task counts
    none). The gradient is of the per-unit mean over the step: backward starts from 1 / loss_divisor rather than
    from a divided loss, which spares a kernel forward and one backward (the same numbers)."""
    measuring = meter.measure() if meter is not None else contextlib.nullcontext()
    backward = meter.backward() if meter is not None else contextlib.nullcontext()
    if state.forward_backward is not None:  # a pipeline schedule: forward and backward in one call (never compiled)
        with measuring, backward:
            return state.forward_backward(x, y, loss_divisor)
    with measuring:
        with state.precision.autocast():
            output = state.task.forward(state.forward, x, y)
            loss = state.task.loss_sum(output, y)
        correct = state.task.correct(output, y)  # an argmax count: no graph (a user's metric runs under no_grad)
        del output  # not held through backward: a language model's logits are the largest activation
        with backward:
            state.precision.scale(loss).backward(state.mean_gradient(loss_divisor, loss))
    return loss.detach(), correct


@torch.no_grad()
def evaluate(state: TrainState, x: torch.Tensor | StreamVal, y: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Validation loss and metric over the whole split, with the run's precision.

    On several ranks each evaluates its contiguous share and the sums are added up, so the loss and the
    metric are over all validation samples (not means of per-rank means)."""
    state.model.eval()
    device, task, dist = state.device, state.task, state.data_dist
    forward = state.eval_forward or state.forward
    if isinstance(x, StreamVal):  # read batch by batch, this rank's share
        batches = x.batches(batch_size, dist.rank, dist.world_size)
    else:
        if dist.world_size > 1:
            share = math.ceil(len(x) / dist.world_size)
            x, y = x[dist.rank * share : (dist.rank + 1) * share], y[dist.rank * share : (dist.rank + 1) * share]
        batches = sequential_batches(x, y, batch_size)
    loss_sum = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    units = steps = samples = 0
    tokens: int | None = None
    start = now(device)
    for xb, yb in batches:
        with state.precision.autocast():
            output = task.forward(forward, xb, yb)
            loss_sum += task.loss_sum(output, yb)
        for key, value in task.metric_sums(output, yb).items():
            sums[key] = sums.get(key, 0) + value
        units += task.units(yb)
        batch_tokens = task.tokens(yb)
        if batch_tokens is not None:
            tokens = (tokens or 0) + batch_tokens
        samples += len(yb)
        steps += 1
    val_time = now(device) - start
    if dist.active:
        keys = sorted(sums)
        totals = dist.sum([loss_sum.item(), units, steps, samples, tokens or 0, *(float(sums[k]) for k in keys)])
        loss_sum = torch.tensor(totals[0])
        units, steps, samples = int(totals[1]), int(totals[2]), int(totals[3])
        tokens = int(totals[4]) if tokens is not None else None
        sums = {k: torch.tensor(v) for k, v in zip(keys, totals[5:])}
        val_time = dist.max([val_time])[0]
    record = {
        "val_loss": loss_sum.item() / units if units else math.nan,
        "val_time_s": val_time,
        "val_steps": steps,
        "val_samples": samples,
        "val_tokens": tokens,
        "val_steps_per_s": steps / val_time if val_time > 0 else None,
        "val_tokens_per_s": tokens / val_time if tokens and val_time > 0 else None,
    }
    record.update(task.finalize({k: float(v) for k, v in sums.items()}, units))
    return record


def _overall_rates(record: dict[str, Any]) -> dict[str, Any]:
    """Steps/s and tokens/s over training and validation together (the seeds' 'overall' columns)."""
    total_time = record["time_s"] + record["val_time_s"]
    overall_tokens = (record["train_tokens"] or 0) + (record["val_tokens"] or 0)
    return {
        "overall_steps_per_s": (record["train_steps"] + record["val_steps"]) / total_time if total_time > 0 else None,
        "overall_tokens_per_s": overall_tokens / total_time if overall_tokens and total_time > 0 else None,
    }
