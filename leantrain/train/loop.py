"""The step and epoch loop. It fires the techniques' events and measures; it knows no technique by name.

Events fire in this order, here and nowhere else: ON_FIT_START; per epoch, per optimizer step: BEFORE_STEP,
AFTER_MICRO_BACKWARD per micro-batch, BEFORE_OPTIMIZER_STEP, AFTER_OPTIMIZER_STEP; ON_EPOCH_END after
validation; ON_FIT_END. One optimizer step: draw ``state.accum_steps`` micro-batches -> forward under
``state.precision.autocast()`` -> loss summed over units / units in the whole step -> backward through the precision's loss scaler ->
unscale -> BEFORE_OPTIMIZER_STEP (gradients final) -> optimizer step through the scaler -> counters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

from leantrain._torch_private import backward_from, compile_seconds
from leantrain.data.batches import BatchSource, sequential_batches
from leantrain.data.streaming import StreamVal
from leantrain.models import flops_per_sample
from leantrain.parallel.dist import Dist
from leantrain.techniques.amp import NO_CONTEXT
from leantrain.techniques.base import Event, StepHooks, Technique, fire
from leantrain.train.correct_count import CorrectCount
from leantrain.train.guards import Guards
from leantrain.train.loggers import NO_LOG, StepLog
from leantrain.train.metrics import ForeignCpuMeter, SavedTensorMeter, now, state_bytes
from leantrain.train.progress import Progress
from leantrain.train.state import EpochProgress, TrainState
from leantrain.train.sums import EpochSums


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
                if "state_bytes_per_rank" in record:  # each rank's figure, and their largest, as a measured epoch has
                    per_rank = [b + activation_bytes for b in record["state_bytes_per_rank"]]
                    record["peak_mem_bytes_per_rank"], record["peak_mem_bytes"] = per_rank, max(per_rank)
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
    device = state.device
    guards = guards or Guards(state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # A mid-epoch checkpoint's epoch continues where it stopped: same sums, same next batch.
    run, state.progress = _EpochRun.resume(state.progress or EpochProgress(), state.task), None
    micro_batches = islice(batches.epoch(state.epoch), run.drawn, None)
    foreign_cpu = ForeignCpuMeter()
    epoch_batches = len(batches)
    bar = progress.epoch_bar(state.epoch, state.total_epochs, epoch_batches)
    clock = _Clock(now(device), compile_seconds())
    hooks = StepHooks.of(techniques)
    log.start_epoch()
    while True:
        for hook in hooks.before_step:
            hook(state)
        step_batches = list(islice(micro_batches, state.accum_steps))
        if not step_batches:
            break
        # The epoch's first step; or, resumed, its first step here when the saved part carries no figure (it was
        # not this epoch that measured, in the interrupted process)
        measure = measure_activations and clock.steps == 0 and (run.sums.steps == 0 or run.activation_bytes == 0)
        step_samples = _train_step(state, run, step_batches, hooks, guards, log, measure)
        clock.step_done(device, step_samples)
        bar.update(len(step_batches), step_samples)
        if run.drawn < epoch_batches and guards.checkpoint_due(state):  # the epoch's last step: its end saves anyway
            state.progress = run.progress(clock.training(now(device)))
            guards.save(state)
            state.progress = None
    # The count's last compare and the guard's last read are the epoch's work too: timed with it.
    run.correct.compare_kept()
    try:
        guards.check(state)  # before the epoch is recorded (and checkpointed): no NaN epoch is ever saved
    finally:
        end = now(device)
        bar.close()
    record = _epoch_record(state, run, guards, foreign_cpu, clock.timed(end, exclude_warmup), clock.training(end),
                           clock.compiled())
    record.update(batches.figures)  # what the batch source measured (the padding it trimmed)
    return record


@dataclass
class _EpochRun:
    """One training epoch on this rank while it runs. A mid-epoch checkpoint saves it as an ``EpochProgress``
    (state.py), from which a resume continues: the same sums, the same next batch."""

    sums: EpochSums  # units, samples, steps and tokens so far; the loss and correct count are put in at the end
    correct: CorrectCount  # the training-accuracy count (a resumed epoch's starts from the saved part's)
    drawn: int = 0  # micro-batches drawn from ``batches.epoch(e)`` so far; a resume skips this many
    # Per-step losses stay on the device, added up at the epoch's end: no kernel per step for sums.
    step_losses: list[torch.Tensor] = field(default_factory=list)
    step_units: list[int] = field(default_factory=list)  # what each step's loss is divided by (0: a skipped step)
    activation_bytes: int = 0
    elapsed_before: float = 0.0  # training time before the interruption (epoch time_s adds it)

    @classmethod
    def resume(cls, saved: EpochProgress, task: Any) -> _EpochRun:
        sums = EpochSums(units=saved.units, samples=saved.samples, steps=saved.steps, tokens=saved.tokens)
        return cls(sums, CorrectCount(task, saved.correct_sum), saved.micro_batches, saved.step_losses,
                   saved.step_units, saved.activation_bytes, saved.elapsed_s)

    def progress(self, elapsed_s: float) -> EpochProgress:
        """What a mid-epoch checkpoint saves, ``elapsed_s`` into this process's part of the epoch."""
        sums = self.sums
        return EpochProgress(self.drawn, sums.steps, sums.units, sums.samples, sums.tokens, self.step_losses,
                             self.step_units, self.elapsed_before + elapsed_s, self.activation_bytes,
                             self.correct.total())

    def finish(self, step_sums: list[float], timed_samples: int) -> EpochSums:
        """This rank's sums at the epoch's end; ``step_sums``: the per-step losses, on the host. A skipped step
        (no units) leaves its loss out."""
        correct = self.correct.total()
        return dataclasses.replace(
            self.sums, loss=sum(total for total, units in zip(step_sums, self.step_units) if units),
            correct=float(correct) if correct is not None else 0.0, timed_samples=timed_samples,
        )


@dataclass
class _Clock:
    """An epoch's clock in this process: its start, and the end of the process's first step in it (the warm-up,
    allocation and kernel selection, that throughput leaves out). ``torch.compile``'s compilations (``compile_s``:
    the first step's, a new batch shape's) are read apart (metrics.compile_seconds) and left out of every figure."""

    start: float
    compile_start: float  # compile_seconds() at the start
    steps: int = 0  # this process's part of the epoch (a mid-epoch resume's earlier part ran elsewhere)
    samples: int = 0
    first_step_end: float = 0.0
    first_step_compile: float = 0.0
    first_step_samples: int = 0

    def step_done(self, device: torch.device, samples: int) -> None:
        self.steps += 1
        self.samples += samples
        if self.steps == 1:
            self.first_step_end, self.first_step_samples = now(device), samples
            self.first_step_compile = compile_seconds()

    def compiled(self) -> float:
        """Seconds spent compiling since the start."""
        return compile_seconds() - self.compile_start

    def training(self, end: float) -> float:
        """Seconds from the start to ``end`` (now), less compilation."""
        return end - self.start - self.compiled()

    def timed(self, end: float, exclude_warmup: bool) -> tuple[float, int, int]:
        """(seconds, samples, steps) throughput is measured over: this process's part of the epoch, less its first
        step when that is the process's first and there are more steps to measure (epoch time_s counts all), less
        compilation."""
        if exclude_warmup and self.steps > 1:
            compiled = compile_seconds() - self.first_step_compile
            return end - self.first_step_end - compiled, self.samples - self.first_step_samples, self.steps - 1
        return self.training(end), self.samples, self.steps


def _train_step(
    state: TrainState, run: _EpochRun, step_batches: list[tuple[Any, torch.Tensor]], hooks: StepHooks,
    guards: Guards, log: StepLog, measure: bool,
) -> int:
    """One optimizer step over ``step_batches``, counted into ``run``; returns its samples."""
    run.drawn += len(step_batches)
    meter = SavedTensorMeter(list(state.model.parameters())) if measure else None
    step_units, step_samples, step_tokens = _count(state.task, step_batches)
    corrects_before = run.correct.mark()
    step_loss = _backward_step(state, step_batches, hooks, _loss_divisor(state, step_units), meter,
                               run.correct)
    state.precision.unscale_(state.optimizer)
    log.step(state, step_loss, step_units, step_samples, step_tokens, len(step_batches))
    for hook in hooks.before_optimizer_step:
        hook(state)
    if guards.before_optimizer_step(state, step_loss):  # skip mode: leave this step's update out
        state.optimizer.zero_grad(set_to_none=True)
        run.correct.drop_since(corrects_before)
        step_units = 0  # a step of no units: its loss is left out of the epoch's
    else:
        state.precision.step(state.optimizer)
        state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    for hook in hooks.after_optimizer_step:
        hook(state)
    run.correct.step_done()
    run.step_losses.append(step_loss)
    run.step_units.append(step_units)
    run.sums.add(units=step_units, samples=step_samples, steps=1, tokens=step_tokens)
    state.samples_seen += step_samples
    if meter is not None:
        run.activation_bytes = meter.peak_bytes
    return step_samples


def _backward_step(
    state: TrainState, step_batches: list[tuple[Any, torch.Tensor]], hooks: StepHooks,
    loss_divisor: float | int, meter: SavedTensorMeter | None, correct: CorrectCount,
) -> torch.Tensor:
    """Forward and backward over a step's micro-batches, the mode's gradient sync after the last; returns the
    step's summed loss (detached) and adds each micro-batch's training output to the ``correct`` count."""
    last = len(step_batches) - 1
    step_loss: torch.Tensor | None = None
    for index, (x, y) in enumerate(step_batches):
        if index < last:
            with state.no_sync():
                loss = _forward_backward(state, x, y, loss_divisor, meter, correct)
        else:
            loss = _forward_backward(state, x, y, loss_divisor, meter, correct)
            state.sync_gradients()
        step_loss = loss if step_loss is None else step_loss + loss  # no kernel at one micro-batch per step
        for hook in hooks.after_micro_backward:
            hook(state, index)
    assert step_loss is not None
    return step_loss


def _epoch_record(
    state: TrainState, run: _EpochRun, guards: Guards, foreign_cpu: ForeignCpuMeter,
    timed: tuple[float, int, int], session_s: float, compile_s: float,
) -> dict[str, Any]:
    """The epoch's record over all ranks: sums of what was processed, the slowest rank's times (one collective
    each). A pipeline's stages saw the same samples: its data-parallel replicas' sums are the whole. ``session_s``:
    this process's training seconds in the epoch, ``compile_s`` (compilation) left out."""
    rate_time, timed_samples, rate_steps = timed
    step_sums = torch.stack(run.step_losses).tolist() if run.step_losses else []  # one host transfer for the epoch
    total = run.finish(step_sums, timed_samples).reduce(state.data_dist)
    time_s, rate_time, compile_s = state.dist.max([session_s + run.elapsed_before, rate_time, compile_s])
    record: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "train_loss": (total.loss / total.units) if total.units else math.nan,
        "time_s": time_s,
        "compile_s": compile_s,
        "train_steps": run.sums.steps,  # this rank's: every data rank takes the same steps
        "train_samples": total.samples,
        "train_steps_per_s": rate_steps / rate_time if rate_time > 0 else None,
        "samples_per_s": total.timed_samples / rate_time if rate_time > 0 else None,
        "train_tokens_per_s": total.tokens * total.timed_samples / total.samples / rate_time
        if total.tokens and rate_time > 0 else None,
        "train_tokens": total.tokens,
        "activation_bytes": run.activation_bytes,
        "flops_per_sample": flops_per_sample(state.model),
        "state_bytes": state_bytes(state.model, state.optimizer),
        "accum_steps": state.accum_steps,
        "lr": state.optimizer.param_groups[0]["lr"],
        "foreign_cpu_cores": _foreign_cores(state.dist, foreign_cpu),
        **guards.epoch_end(state, step_sums, run.step_units),
    }
    if state.task.train_metric:
        record[state.task.train_metric] = total.correct / total.units if total.units else math.nan
    if state.device.type == "cuda":
        record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(state.device)
    else:
        record["peak_mem_bytes"] = record["state_bytes"] + run.activation_bytes
    return _with_rank_memory(state.dist, record)


def _count(task: Any, step_batches: list[tuple[Any, torch.Tensor]]) -> tuple[int, int, int | None]:
    """A step's loss units, samples and tokens (None where the task counts no tokens), in one pass."""
    units = samples = 0
    tokens: int | None = None
    for _, y in step_batches:
        units += task.units(y)
        samples += y.shape[0]  # len(y) goes through Tensor.__len__'s Python (~0.5 us)
        counted = task.tokens(y)
        if counted is not None:
            tokens = (tokens or 0) + counted
    return units, samples, tokens


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
    state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_divisor: float | int, meter: SavedTensorMeter | None,
    correct: CorrectCount,
) -> torch.Tensor:
    """One micro-batch; returns its summed loss (detached) and adds its output to the ``correct`` count. The
    gradient is of the per-unit mean over the step: backward starts from 1 / loss_divisor rather than
    from a divided loss, which spares a kernel forward and one backward (the same numbers)."""
    if meter is None:  # every step but a measured one: no context to enter
        return _forward_backward_plain(state, x, y, loss_divisor, NO_CONTEXT, correct)
    with meter.measure():
        return _forward_backward_plain(state, x, y, loss_divisor, meter.backward(), correct)


def _forward_backward_plain(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, loss_divisor: float | int,
    backward: contextlib.AbstractContextManager[Any], correct: CorrectCount,
) -> torch.Tensor:
    """``_forward_backward`` inside whatever measures it; ``backward`` is entered around the backward pass."""
    if state.forward_backward is not None:  # a pipeline schedule: forward and backward in one call (never compiled)
        with backward:
            loss, counted = state.forward_backward(x, y, loss_divisor)
        correct.add_count(counted)
        return loss
    with state.precision.autocast():
        output = state.task.forward(state.forward, x, y)
        loss = state.task.loss_sum(output, y)
    correct.add(output, y)  # builds no graph; keeps the predictions, or a small CPU output detached
    del output  # not held through backward: a language model's logits are the largest activation
    with backward:
        backward_from(state.precision.scale(loss), state.mean_gradient(loss_divisor, loss))
    return loss.detach()


@torch.no_grad()
def evaluate(state: TrainState, x: torch.Tensor | StreamVal, y: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Validation loss and metric over the whole split, with the run's precision.

    On several ranks each evaluates its contiguous share and the sums are added up, so the loss and the
    metric are over all validation samples (not means of per-rank means)."""
    state.model.eval()
    device, task, dist = state.device, state.task, state.data_dist
    forward = state.eval_forward or state.forward
    batches = _val_batches(x, y, batch_size, dist)
    # The loss and the task's sums stay on the device until the end: no host sync per batch.
    loss_sum = torch.zeros((), device=device)
    metric_sums: dict[str, Any] = {}
    counted = EpochSums()
    start, compile_start = now(device), compile_seconds()
    for xb, yb in batches:
        with state.precision.autocast():
            output = task.forward(forward, xb, yb)
            loss_sum += task.loss_sum(output, yb)
        for key, value in task.metric_sums(output, yb).items():
            metric_sums[key] = metric_sums.get(key, 0) + value
        counted.add(units=task.units(yb), samples=len(yb), steps=1, tokens=task.tokens(yb))
    compiled = compile_seconds() - compile_start  # eval mode's own graph, a last batch's shape
    val_time = now(device) - start - compiled
    counted.loss, counted.metrics = loss_sum.item(), {k: float(v) for k, v in metric_sums.items()}
    total = counted.reduce(dist)
    val_time, compiled = dist.max([val_time, compiled])
    record = {
        "val_loss": total.loss / total.units if total.units else math.nan,
        "val_time_s": val_time,
        "val_compile_s": compiled,
        "val_steps": total.steps,
        "val_samples": total.samples,
        "val_tokens": total.tokens,
        "val_steps_per_s": total.steps / val_time if val_time > 0 else None,
        "val_tokens_per_s": total.tokens / val_time if total.tokens and val_time > 0 else None,
    }
    record.update(task.finalize(total.metrics, total.units))
    return record


def _val_batches(
    x: torch.Tensor | StreamVal, y: torch.Tensor, batch_size: int, dist: Dist
) -> Iterator[tuple[Any, torch.Tensor]]:
    """This rank's contiguous share of the validation split, batch by batch (a stream is read as it goes)."""
    if isinstance(x, StreamVal):
        return x.batches(batch_size, dist.rank, dist.world_size)
    if dist.world_size > 1:
        share = math.ceil(len(x) / dist.world_size)
        x, y = x[dist.rank * share : (dist.rank + 1) * share], y[dist.rank * share : (dist.rank + 1) * share]
    return sequential_batches(x, y, batch_size)


def _overall_rates(record: dict[str, Any]) -> dict[str, Any]:
    """Steps/s and tokens/s over training and validation together (the seeds' 'overall' columns)."""
    total_time = record["time_s"] + record["val_time_s"]
    overall_tokens = (record["train_tokens"] or 0) + (record["val_tokens"] or 0)
    return {
        "overall_steps_per_s": (record["train_steps"] + record["val_steps"]) / total_time if total_time > 0 else None,
        "overall_tokens_per_s": overall_tokens / total_time if overall_tokens and total_time > 0 else None,
    }
