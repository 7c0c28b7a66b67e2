"""A run's training-state checkpoint: everything needed to continue bit for bit, and the checks before resuming.

Every rank takes part in a snapshot (each contributes its random states; a sharded or staged model is
gathered by ``state.plan``), only the writing rank writes, and every rank reads the same file back and
takes its own part. The file format (a checksummed ``torch.save`` payload) is ``checkpoint.py``'s; the
model's and optimizer's state come from the parallel plan, so a layout with its own distributed
checkpoint (FSDP's) changes the plan, not this.

Beside the training state a checkpoint keeps the run's own record fields (an experiment's ``experiment``, ``case``
and ``recipe``), so a run resumed by ``train --resume`` keeps them, and ``replaces``: the fingerprint of the record a
forced retraining will replace (see ``run_identity.finished_record``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.parallel.dist import Dist
from leantrain.techniques import Technique
from leantrain.train import checkpoint
from leantrain.train.run_identity import check_checkpoint_name, differing_keys
from leantrain.train.state import EpochProgress, TrainState


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload (checked by ``checkpoint.load``), refused in one line naming both names when the run its
    saved settings name is not the run its file is named for (renamed: it would resume nothing, or the wrong run)."""
    saved = checkpoint.load(path)
    check_checkpoint_name(path, saved_run_name(path, saved))
    return saved


def saved_run_name(path: Path, saved: dict[str, Any]) -> str:
    return RunConfig.from_dict(saved["config"], where=str(path)).run_name


class TrainingCheckpoint:
    """The checkpoint at ``path`` (None: the run keeps none) of a run with ``config`` on ``world_size`` workers;
    ``run_fields``: the run's own record fields, kept for a resume; ``replaces``: see the module's doc."""

    def __init__(self, path: Path | None, config: RunConfig, world_size: int, *,
                 run_fields: dict[str, Any] | None = None, replaces: str | None = None):
        self.path, self.config, self.world_size = path, config, world_size
        self.run_fields, self.replaces = run_fields or {}, replaces

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def read(self) -> dict[str, Any] | None:
        """The saved training state (every rank reads it), checked against this run; None if there is none."""
        if self.path is None or not self.path.exists():
            return None
        saved = checkpoint.load(self.path)
        self.check_resumable(saved)
        # Settings first (the keys that differ say more); then a checkpoint of another run of the same settings, renamed.
        check_checkpoint_name(self.path, saved_run_name(self.path, saved), self.config.run_name)
        return saved

    @staticmethod
    def saved_run_fields(saved: dict[str, Any] | None) -> dict[str, Any]:
        """The record fields the run was started with (an experiment's), as saved; {} for older checkpoints."""
        text = (saved or {}).get("run_fields")
        return json.loads(text) if isinstance(text, str) else {}

    def check_resumable(self, saved: dict[str, Any]) -> None:
        """The checkpoint was written by this many workers with these settings; else one line saying what differs."""
        saved_world = saved.get("world_size", 1)
        if saved_world != self.world_size:
            raise UsageError(f"the checkpoint was written by {saved_world} worker(s); resume it with {saved_world}, "
                             f"not {self.world_size} (the batch order and per-rank random states depend on it)")
        now = self.config.to_dict()
        changed = differing_keys(saved["config"], now)
        if changed:
            defaults = RunConfig().to_dict()  # a key one side lacks counts as its default (differing_keys)
            values = ", ".join(f"{key} {_brief(saved['config'].get(key, defaults.get(key)))} there, "
                               f"{_brief(now.get(key, defaults.get(key)))} here" for key in changed[:3])
            raise UsageError(f"the checkpoint was written by a run with other settings ({', '.join(changed)}): "
                             f"{values}; resume with the original configuration")

    def save(self, state: TrainState, techniques: list[Technique], extra: dict[str, Any]) -> None:
        """Every rank calls it (each contributes its RNG states); the main rank of ``state.dist`` writes."""
        if self.path is None:
            return
        payload = snapshot(state, techniques, self.config)
        # JSON text: a weights-only load reads plain data only, and the fields are the record's (JSON) anyway.
        own = {"run_fields": json.dumps(self.run_fields, default=str), "replaces": self.replaces}
        if state.dist.is_main:  # under an ensemble, every member is main of its own loop
            checkpoint.save(self.path, {**payload, **own, **extra})

    def restore(self, state: TrainState, techniques: list[Technique], saved: dict[str, Any]) -> None:
        """Put ``saved`` back into ``state`` and the techniques; each rank takes its own random states."""
        self.check_resumable(saved)
        labels = _stateful_labels(techniques)
        if sorted(saved.get("technique_labels", labels)) != sorted(labels):  # hook order is not part of the identity
            raise UsageError(f"the checkpoint was written with techniques {saved['technique_labels']}, not {labels}; "
                             "resume with the original techniques")
        for technique in techniques:  # first: a technique may rebuild the model (e.g. a wider layer)
            technique.load_state_dict(saved["techniques"].get(technique.name, {}), state)
        try:
            state.plan.load_model_state(state.model, saved["model"])
        except RuntimeError as e:  # another model's weights: say so in one line, not a page of shapes
            first = str(e).strip().splitlines()[0][:120]
            raise UsageError(f"the checkpoint holds weights of another model than {type(state.model).__name__} "
                             f"({first}); resume with the model it was written with") from None
        state.plan.load_optimizer_state(state.model, state.optimizer, saved["optimizer"])
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.samples_seen, state.accum_steps = saved["samples_seen"], saved["accum_steps"]
        state.records = list(saved["records"])
        state.step_losses = list(saved["step_losses"])
        state.guard_state = dict(saved["guards"])
        progress = saved["progress"][state.dist.rank] if isinstance(saved["progress"], list) else saved["progress"]
        state.progress = EpochProgress.from_dict(progress, state.device) if progress else None
        dist = state.dist
        checkpoint.restore_rng_states(saved["rng_per_rank"][dist.rank] if dist.world_size > 1 else saved["rng"])

    def remove(self, state: TrainState) -> None:
        """The run finished (its record is on disk): its weights are not results. The writing rank deletes."""
        if self.path is not None and state.dist.is_main:
            self.path.unlink(missing_ok=True)


def snapshot(state: TrainState, techniques: list[Technique], config: RunConfig) -> dict[str, Any]:
    """Everything needed to continue bit-for-bit: weights, optimizer, technique states, RNGs, counters."""
    return {
        "config": config.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "accum_steps": state.accum_steps,
        "records": state.records,
        "step_losses": state.step_losses,
        # The unfinished epoch's sums are each rank's own (its share of the samples): every rank's is kept.
        "progress": _gathered(state.dist, state.progress.to_dict() if state.progress is not None else None),
        "guards": state.guard_state,
        "model": state.plan.model_state(state.model),  # the whole model, whatever the layout
        "optimizer": state.plan.optimizer_state(state.model, state.optimizer),
        "techniques": {t.name: t.state_dict() for t in techniques},
        "technique_labels": _stateful_labels(techniques),
        "rng": checkpoint.rng_states(),
        "world_size": state.dist.world_size,
        "rng_per_rank": state.dist.gather(checkpoint.rng_states()) if state.dist.world_size > 1 else None,
    }


def _gathered(dist: Dist, value: Any) -> Any:
    """Every rank's ``value`` in rank order when there are several ranks; on one, the value itself."""
    return dist.gather(value) if dist.world_size > 1 else value


def _stateful_labels(techniques: list[Technique]) -> list[str]:
    """Techniques whose state a checkpoint carries; a stateless callback may come and go between sessions."""
    return [t.describe() for t in techniques if type(t).state_dict is not Technique.state_dict]


def _brief(value: Any) -> str:
    text = repr(value)  # a long path keeps its end: the file's name
    return text if len(text) <= 80 else text[:25] + "..." + text[-52:]
