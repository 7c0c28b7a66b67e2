"""One run, start to finish: build (or take) data, model, optimizer and techniques; train; return the record.

Used by the CLI (``leantrain train``), the experiment runner, and ``leantrain.fit`` on a user's model.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain import data as data_sets
from leantrain import models, tuning
from leantrain.config import RunConfig, resolve_device
from leantrain.data.batches import BatchSource, DataLoaderBatches, TensorBatches
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.fileio import prepare_output_dir, write_json
from leantrain.tasks import get_task
from leantrain.techniques import Technique, from_config
from leantrain.techniques.base import in_hook_order
from leantrain.train import checkpoint
from leantrain.train.loop import train
from leantrain.train.metrics import peak_matmul_flops, training_utilisation
from leantrain.train.progress import Progress
from leantrain.train.record import SCHEMA, environment, summarize
from leantrain.train.state import TrainState


def execute(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    dataset: Dataset | None = None,
    techniques: list[Technique] | None = None,  # in addition to those the config switches on
    out_dir: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    extra_run_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one run. With ``out_dir``, checkpoint there each epoch and write ``<run>.json`` at the end.

    With ``resume``, continue from ``<out_dir>/<run>.ckpt`` if it exists (else start afresh).
    """
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()  # restored at the end: the next run in this process starts alike
    if isinstance(config.threads, int):
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    dataset = dataset if dataset is not None else data_sets.load(config.data, seed=config.seed)
    model = model if model is not None else models.build(config.model, dataset)
    ckpt_path = out_dir / f"{config.run_name}{checkpoint.SUFFIX}" if out_dir else None
    saved = checkpoint.load(ckpt_path) if resume and ckpt_path and ckpt_path.exists() else None
    progress = Progress(quiet=quiet, label=config.run_name)
    # auto knobs -> measured (or cached, or on resume saved) choices; `config` keeps "auto" for checkpoints
    tuned = tuning.resolve(config, model, dataset, device, saved=saved.get("autotune") if saved else None,
                           say=progress.message)
    techniques = in_hook_order(from_config(tuned.config) + list(techniques or []))
    if out_dir:
        prepare_output_dir(out_dir)  # only now: a bad data set or model never leaves an empty folder
    dataset = dataset.to(device)
    model.to(device)

    task = get_task(dataset.task)
    batches = _batch_source(config, dataset)
    state = TrainState(
        model=model,
        optimizer=make_optimizer(tuned.config, model),
        task=task,
        device=device,
        base_lr=config.lr,
        steps_per_epoch=len(batches),
        total_epochs=config.epochs,
    )
    if saved:
        restore(state, techniques, saved, config)

    def save(s: TrainState) -> None:
        if ckpt_path:
            checkpoint.save(ckpt_path, {**snapshot(s, techniques, config), "autotune": tuned.record})

    train(
        state, batches, dataset.x_val, dataset.y_val,
        techniques=techniques, eval_batch_size=config.eval_batch_size, progress=progress, on_epoch_saved=save,
    )

    autotune = {"autotune": tuned.record} if tuned.record else {}
    record = make_record(config, state, dataset, techniques, {**(extra_run_fields or {}), **autotune})
    if out_dir:
        write_json(out_dir / f"{config.run_name}.json", record)
        ckpt_path.unlink(missing_ok=True)  # the run finished; its weights are not results
    torch.set_num_threads(threads_before)
    return record


# One Adam update, three implementations: a loop over tensors, grouped (foreach) kernels, one fused kernel.
ADAM_KERNELS: dict[str, dict[str, bool]] = {"adam": {"fused": False}, "foreach-adam": {"foreach": True}, "fused-adam": {"fused": True}}


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer in ADAM_KERNELS:
        kernel = ADAM_KERNELS[config.optimizer]
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                foreach=kernel.get("foreach"), fused=kernel.get("fused"))
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _batch_source(config: RunConfig, dataset: Dataset) -> BatchSource:
    source = TensorBatches if config.loader == "tensor" else DataLoaderBatches
    return source(dataset.x_train, dataset.y_train, config.batch_size, shuffle=True, seed=config.seed)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def snapshot(state: TrainState, techniques: list[Technique], config: RunConfig) -> dict[str, Any]:
    """Everything needed to continue bit-for-bit: weights, optimizer, technique states, RNGs, counters."""
    return {
        "config": config.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "accum_steps": state.accum_steps,
        "records": state.records,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "techniques": {t.name: t.state_dict() for t in techniques},
        "technique_labels": _stateful_labels(techniques),
        "rng": checkpoint.rng_states(),
    }


def restore(state: TrainState, techniques: list[Technique], saved: dict[str, Any], config: RunConfig) -> None:
    if saved["config"] != config.to_dict():
        changed = sorted(k for k in config.to_dict() if saved["config"].get(k) != config.to_dict()[k])
        raise UsageError(
            f"the checkpoint was written by a run with other settings ({', '.join(changed)}); "
            "resume with the original configuration"
        )
    labels = _stateful_labels(techniques)
    if saved.get("technique_labels", labels) != labels:
        raise UsageError(f"the checkpoint was written with techniques {saved['technique_labels']}, not {labels}; "
                         "resume with the original techniques")
    for technique in techniques:  # first: a technique may rebuild the model (e.g. a wider layer)
        technique.load_state_dict(saved["techniques"].get(technique.name, {}), state)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.epoch, state.step = saved["epoch"], saved["step"]
    state.samples_seen, state.accum_steps = saved["samples_seen"], saved["accum_steps"]
    state.records = list(saved["records"])
    checkpoint.restore_rng_states(saved["rng"])


def _stateful_labels(techniques: list[Technique]) -> list[str]:
    """Techniques whose state a checkpoint carries; a stateless callback may come and go between sessions."""
    return [t.describe() for t in techniques if type(t).state_dict is not Technique.state_dict]


def make_record(
    config: RunConfig, state: TrainState, dataset: Dataset, techniques: list[Technique], extra: dict[str, Any]
) -> dict[str, Any]:
    flops = models.flops_per_sample(state.model)
    peak = peak_matmul_flops(state.device, state.compute_dtype) if flops else None
    for epoch in state.records:
        # Sequence models declare FLOPs per token, the others per sample; a resized model, per epoch.
        rate = epoch.get("train_tokens_per_s") or epoch.get("samples_per_s")
        epoch_flops = epoch.get("flops_per_sample") or flops
        epoch["utilisation"] = training_utilisation(epoch_flops, rate, peak) if epoch_flops and peak and rate else None
    task = state.task
    return {
        "schema": SCHEMA,
        "run": {
            "name": config.run_name,
            "model": config.model,
            "data": dataset.name,
            "data_spec": config.data,
            "task": dataset.task,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "techniques": [t.describe() for t in techniques],
            "parallel": "none",
            "world_size": 1,
            "seed": config.seed,
            "params": sum(p.numel() for p in state.model.parameters()),
            "flops_per_sample": flops,
            "train_samples": len(dataset.x_train),
            "val_samples": len(dataset.x_val),
            "config": config.to_dict(),
            **extra,
        },
        "env": environment(state.device, peak),
        "epochs": state.records,
        "summary": summarize(state.records, task.metric, config.target, task.higher_is_better),
    }
