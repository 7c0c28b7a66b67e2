"""What a recipe's settings are called outside leantrain, and which have no equivalent there.

``leantrain_only``: the settings the plain PyTorch script (plain_script.py) does not carry out, each with why;
``lightning`` and ``accelerate``: a Lightning ``Trainer(...)`` and an Accelerate ``Accelerator(...)`` for the recipe,
as text (neither package is imported), with the lines that go in the user's own code and what neither has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leantrain.advice.recipe_values import defaults, described, non_default
from leantrain.techniques.registry import techniques

# Techniques the plain script carries out itself (plain_script.py); every other one switched on is leantrain's.
IN_THE_SCRIPT = frozenset({"precision", "grad_clip", "schedule", "compile", "checkpointing"})
# Core keys the plain script carries out (model, data and the loop's own numbers).
CORE_IN_THE_SCRIPT = frozenset({"model", "data", "epochs", "batch_size", "eval_batch_size", "lr", "optimizer",
                                "weight_decay", "label_smoothing", "output_key", "loader", "device", "seed", "threads",
                                "init_from"})
# Core keys that only matter beside another setting: with it at its default they change nothing.
ONLY_WITH = {"lr_batch": ("batch_size", "auto")}
PARALLEL_KEYS = ("parallel", "procs", "members", "ddp_bucket_mb", "ddp_static_graph", "ddp_grad_as_bucket_view",
                 "ddp_compress", "shard_optimizer", "microbatches", "schedule_pp", "backend", "dist_timeout")
WHY = {
    "length_buckets": "leantrain's loader batches padded sequences of similar length and trims their padding",
    "trim_padding": "leantrain's loader trims each batch of padded sequences to its longest row",
    "on_nonfinite": "leantrain's guard skips (and counts) a step whose loss or gradients are not finite",
    "target": "leantrain's record: the time to reach it (no effect on training)",
    "name": "leantrain's run name (no effect on training)",
    "memory_check": "leantrain's preflight memory estimate (no effect on training)",
    "log": "leantrain's step and epoch logs (no effect on training)",
    "save_model": "leantrain's model file for evaluate/predict; here: torch.save(model.state_dict(), PATH)",
    "checkpoint_every": "leantrain's mid-epoch checkpoints and resume",
    "lr_batch": "batch_size auto: the batch the lr is meant for",
}
AUTO_WHY = {
    "batch_size": "chosen by timing at the run's start, lr scaled with it; give the chosen size",
    "threads": "the CPUs other processes leave free, at the run's start; give a count",
    "precision": "the fastest precision whose loss keeps with fp32's, timed at the run's start; give it",
    "optimizer": "the fastest Adam kernel, timed at the run's start; the plain loop is used here",
}
PARALLEL_WHY = ("this script is one process: leantrain's --parallel/--procs (or torchrun and DistributedDataParallel "
                "in your loop)")


def leantrain_only(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, why) for each non-default setting of ``config`` the plain script does not carry out."""
    values = {**defaults(), **config}
    given = non_default(config)
    technique_keys = {o.name for cls in techniques() for o in cls.options}
    kept: list[tuple[str, str]] = []
    for key in given:
        value = values[key]
        if value == "auto" or (key == "optimizer" and value == "auto-adam"):
            kept.append((_setting(key, value), AUTO_WHY.get(key, "chosen by measurement at the run's start")))
        elif key in ONLY_WITH and values[ONLY_WITH[key][0]] != ONLY_WITH[key][1]:
            continue  # inert: its setting is off
        elif key in WHY:
            kept.append((_setting(key, value), WHY[key]))
        elif key not in CORE_IN_THE_SCRIPT and key not in PARALLEL_KEYS and key not in technique_keys:
            kept.append((_setting(key, value), "no plain-PyTorch equivalent written here"))
    parallel = [k for k in PARALLEL_KEYS if k in given]
    if values["parallel"] != "none" or values["procs"] is not None:
        kept.append((", ".join(_setting(k, values[k]) for k in parallel), PARALLEL_WHY))
    return kept + _techniques_kept(values, given)


def _techniques_kept(values: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, str]]:
    """Each technique switched on that the script does not carry out: its keys, and what it is."""
    from leantrain.config import RunConfig

    config = RunConfig(**{k: v for k, v in values.items() if k in defaults()})  # unvalidated: only read here
    kept = []
    for cls in techniques():
        if cls.name in IN_THE_SCRIPT or not cls.is_switched_on(config):
            continue
        keys = [o.name for o in cls.options if o.name in given] or [cls.options[0].name]
        kept.append((", ".join(_setting(k, values[k]) for k in keys), f"{cls.summary}; leantrain's technique"))
    return kept


def _setting(key: str, value: Any) -> str:
    return f"{key} = {described(value)}"


@dataclass
class FrameworkArgs:
    """One framework's constructor arguments for a recipe (``name=value`` text), and what goes in the user's code
    for it alone."""

    arguments: list[str] = field(default_factory=list)
    in_your_code: list[str] = field(default_factory=list)


LIGHTNING_PRECISION = {"bf16": '"bf16-mixed"', "fp16": '"16-mixed"'}
ACCELERATE_PRECISION = {"bf16": '"bf16"', "fp16": '"fp16"'}


def lightning(config: dict[str, Any]) -> FrameworkArgs:
    """``lightning.Trainer(...)`` for the recipe."""
    c, out = {**defaults(), **config}, FrameworkArgs()
    out.arguments.append(f"max_epochs={c['epochs']}")
    if c["precision"] in LIGHTNING_PRECISION:
        out.arguments.append(f"precision={LIGHTNING_PRECISION[c['precision']]}")
    if c["grad_clip"] is not None:
        out.arguments += [f"gradient_clip_val={c['grad_clip']!r}", 'gradient_clip_algorithm="norm"']
    if c["device"] != "auto":
        out.arguments.append(f'accelerator="{"cpu" if c["device"] == "cpu" else "gpu"}"')
    if c["parallel"] in ("ddp", "fsdp"):
        out.arguments.append(f'strategy="{c["parallel"]}"')
        out.arguments += [f"devices={c['procs']}"] if isinstance(c["procs"], int) else []
    out.in_your_code.append("`lightning.seed_everything(" + str(c["seed"]) + ")`")
    if c["schedule"] == "warmup-cosine":
        out.in_your_code.append('the LambdaLR in `configure_optimizers` with `"interval": "step"`')
    if c["compile"]:
        out.in_your_code.append("`model = torch.compile(model)` before `trainer.fit`")
    if c["checkpointing"] != "off":
        out.in_your_code.append("`apply_activation_checkpointing` in your LightningModule's `configure_model`")
    return out


def accelerate(config: dict[str, Any]) -> FrameworkArgs:
    """``accelerate.Accelerator(...)`` for the recipe."""
    c, out = {**defaults(), **config}, FrameworkArgs()
    out.arguments.append(f"mixed_precision={ACCELERATE_PRECISION.get(c['precision'], repr('no'))}")
    if c["compile"]:
        out.arguments.append('dynamo_backend="inductor"')
    if c["device"] == "cpu":
        out.arguments.append("cpu=True")
    out.in_your_code.append("`accelerate.utils.set_seed(" + str(c["seed"]) + ")`")
    if c["parallel"] in ("ddp", "fsdp"):
        out.in_your_code.append(f"`accelerate launch --num_processes {c['procs'] or 'N'}` ({c['parallel']} in its "
                                "config)")
    if c["grad_clip"] is not None:
        out.in_your_code.append(f"`accelerator.clip_grad_norm_(model.parameters(), {c['grad_clip']!r})` before "
                                "`optimizer.step()`")
    if c["checkpointing"] != "off":
        out.in_your_code.append("`apply_activation_checkpointing` on the model before `accelerator.prepare`")
    return out


def your_code(config: dict[str, Any]) -> list[str]:
    """What neither constructor takes, the same in both: batches, optimizer, schedule, threads (as the plain script
    writes them)."""
    c = {**defaults(), **config}
    kernel = {"fused-adam": ", fused=True", "foreach-adam": ", foreach=True"}.get(c["optimizer"], "")
    optimizer = {"adamw": "AdamW", "sgd": "SGD"}.get(c["optimizer"], "Adam")
    decay = f", weight_decay={c['weight_decay']!r}" if c["weight_decay"] else ""
    lines = [f"`DataLoader(..., batch_size={c['batch_size']}, shuffle=True)`",
             f"`torch.optim.{optimizer}(model.parameters(), lr={c['lr']!r}{decay}{kernel})`"]
    if c["schedule"] == "warmup-cosine":
        lines.append("the warmup-cosine `LambdaLR` of the plain script, stepped after every optimizer step")
    if isinstance(c["threads"], int):
        lines.append(f"`torch.set_num_threads({c['threads']})`")
    return lines


def no_framework_equivalent(config: dict[str, Any]) -> list[str]:
    """The settings neither Lightning nor Accelerate has (leantrain's own, as for the plain script)."""
    c = {**defaults(), **config}
    kept = []
    if c["accumulation"] != "off":
        kept.append(f"`accumulation = {c['accumulation']}`: `accumulate_grad_batches` and `gradient_accumulation_steps` "
                    "take a fixed count; the adaptive one is leantrain's")
    skip = ("accumulation", "parallel") if c["parallel"] in ("ddp", "fsdp") else ("accumulation",)
    return kept + [f"`{setting}`: {why}" for setting, why in leantrain_only(c) if not setting.startswith(skip)]
