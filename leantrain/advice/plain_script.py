"""A recipe as a plain PyTorch training script, with no leantrain loop, and the patch between two of them.

leantrain only loads the data and builds the model (the same tensors and initial weights as ``leantrain train``);
the rest is PyTorch, doing for these settings what leantrain's loop does (leantrain/train/loop.py): the seeding
before the data and the model, its tensor loader's batch order (a permutation per epoch from a generator seeded by
``(seed, epoch)``, the last batch short), the loss summed per batch and divided by its units, autocast, the Adam
kernel, the warmup-cosine formula (techniques/schedule.py) as a ``LambdaLR``, and the epoch's loss averaged per
unit. So the script prints the per-epoch ``train_loss`` that ``leantrain train`` records (a test holds it to that).

A setting the script cannot carry out is a comment at its top (``equivalents.leantrain_only``), never dropped.
Both scripts of a patch come from one template, so the patch holds only the lines the settings change.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from leantrain.advice.equivalents import leantrain_only
from leantrain.advice.recipe_values import defaults

ADAM_KERNELS = {"adam": "foreach=False", "foreach-adam": "foreach=True", "fused-adam": "fused=True"}
AUTOCAST = {
    "bf16": "dtype=torch.bfloat16)  # bf16 compute, fp32 weights",
    "fp16": "dtype=torch.float16)  # fp16 compute, fp32 weights, loss scaling",
}


def plain_script(config: dict[str, Any], *, title: str, checkpointed: Sequence[str] | None = None) -> str:
    """The script for ``config`` (a ``RunConfig.to_dict()``); ``title`` names the recipe in its docstring;
    ``checkpointed``: the names of the modules leantrain's run wrapped for activation checkpointing, if known."""
    c = {**defaults(), **config}
    sections = [_head(c, title, checkpointed), _settings(c), _setup(c), _model(c, checkpointed), _optimizer(c), _loss(c),
                _batches(c), _validation(), _training(c)]
    return "\n".join(line for section in sections for line in section) + "\n"


def script_patch(baseline_script: str, recommended_script: str, baseline_name: str, recommended_name: str) -> str:
    """The unified diff that turns the baseline's script into the recommended one."""
    return "".join(difflib.unified_diff(baseline_script.splitlines(keepends=True),
                                        recommended_script.splitlines(keepends=True), baseline_name, recommended_name))


def _head(c: dict[str, Any], title: str, checkpointed: Sequence[str] | None) -> list[str]:
    uses_math = c["schedule"] == "warmup-cosine" or (c["checkpointing"] == "sqrt" and not checkpointed)
    imports = ["import functools", *(["import math"] if uses_math else []), "import random",
               *(["from pathlib import Path"] if c["init_from"] else []), "",
               "import torch", "import torch.nn.functional as F"]
    if c["checkpointing"] != "off":
        imports += ["from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (",
                    "    CheckpointImpl,", "    apply_activation_checkpointing,", "    checkpoint_wrapper,", ")"]
    if c["checkpointing"] == "selective":
        imports.append("from torch.utils.checkpoint import create_selective_checkpoint_contexts")
    if c["loader"] == "dataloader":
        imports.append("from torch.utils.data import DataLoader, TensorDataset")
    return [
        f'"""Plain PyTorch: {title}, without leantrain\'s training loop.', "",
        "leantrain only loads the data and builds the model (the same tensors and initial weights as `leantrain "
        "train`);", "the training is PyTorch. Each epoch prints its mean training loss (leantrain's train_loss) and "
        "validation loss.", "Run: python <this file>", '"""',
        *imports, "", "from leantrain.data import load", "from leantrain.models import build",
        *(["from leantrain.inference.model_file import find_model, read_model_file"] if c["init_from"] else []), "",
    ]


def _settings(c: dict[str, Any]) -> list[str]:
    lines = [f"MODEL = {json.dumps(c['model'])}", f"DATA = {json.dumps(c['data'])}", f"EPOCHS = {c['epochs']!r}",
             f"BATCH_SIZE = {c['batch_size'] if isinstance(c['batch_size'], int) else c['lr_batch']!r}",
             f"EVAL_BATCH_SIZE = {c['eval_batch_size']!r}", f"LR = {c['lr']!r}", f"SEED = {c['seed']!r}"]
    if c["init_from"] is not None:
        lines.append(f"INIT_FROM = {json.dumps(c['init_from'])}  # a leantrain model file, or a run folder holding one")
    kept = leantrain_only(c)
    if kept:
        lines.append("# Keep leantrain for these (no plain-PyTorch equivalent written here):")
        lines += [f"#   {setting}: {why}" for setting, why in kept]
    return [*lines, ""]


def _setup(c: dict[str, Any]) -> list[str]:
    lines = [f"torch.set_num_threads({c['threads']})"] if isinstance(c["threads"], int) else []
    device = ('torch.device("cuda" if torch.cuda.is_available() else "cpu")' if c["device"] == "auto"
              else f"torch.device({c['device']!r})")
    return [
        *lines,
        "torch.manual_seed(SEED)  # before the data and the model, as leantrain seeds: the same initial weights",
        "random.seed(SEED)",
        f"device = {device}",
        "data = load(DATA, seed=SEED)",
        "model = build(MODEL, data).to(device)",
        *(["# init_from: the saved weights (leantrain checks that the model and vocabulary are the file's own)",
           "model.load_state_dict(read_model_file(find_model(Path(INIT_FROM)))[\"state_dict\"])"]
          if c["init_from"] is not None else []),
        "x_train, y_train = data.x_train.to(device), data.y_train.to(device)",
        "x_val, y_val = data.x_val.to(device), data.y_val.to(device)",
    ]


def _model(c: dict[str, Any], checkpointed: Sequence[str] | None) -> list[str]:
    """Checkpoint wrapping, compile and autocast: how the forward pass runs."""
    lines = _checkpointing(c, checkpointed) if c["checkpointing"] != "off" else []
    dtype = AUTOCAST.get(c["precision"], "enabled=False)  # fp32: no mixed precision")
    lines.append(f"autocast = functools.partial(torch.autocast, device.type, {dtype}")
    if c["precision"] in AUTOCAST:
        lines += ["", "", *_recurrent_in_fp32()]
    if c["compile"]:
        lines.append("forward = torch.compile(model)  # compiled at the first call (leantrain falls back to eager "
                     "where that fails)")
    else:
        lines.append("forward = model")
    if c["precision"] == "fp16":
        lines.append("scaler = torch.amp.GradScaler(device.type)  # x2 every 2000 clean steps, x0.5 on inf/NaN")
    return lines


def _checkpointing(c: dict[str, Any], checkpointed: Sequence[str] | None) -> list[str]:
    """The modules leantrain wraps (techniques/checkpointing.py): by name where its record lists them; else the
    same rule: of the L blocks (the classes named, or model.blocks), sqrt wraps round(√L) evenly spaced, N wraps N,
    full and selective all of them."""
    setting = c["checkpointing"]
    if checkpointed:
        chosen = ["names = {" + ", ".join(repr(n) for n in checkpointed) + "}  # the modules leantrain's run wrapped",
                  "wrapped = {module for name, module in model.named_modules() if name in names}"]
    else:
        classes = c.get("checkpointing_modules")
        if classes:
            names = "{" + ", ".join(repr(n.strip()) for n in str(classes).split(",")) + "}"
            chosen = [f"blocks = [m for m in model.modules() if type(m).__name__ in {names}]"]
        else:
            chosen = ["blocks = list(model.blocks)  # leantrain's default: the model's longest run of same-class blocks"]
        if setting in ("full", "selective"):
            chosen.append(f"wrapped = set(blocks)  # checkpointing = {setting}: all of them")
        else:
            count = "max(1, round(math.sqrt(len(blocks))))" if setting == "sqrt" else f"min({setting}, len(blocks))"
            chosen += [f"count = {count}  # checkpointing = {setting}",
                       "wrapped = {blocks[i * len(blocks) // count] for i in range(count)}  # evenly spaced"]
    context = []
    if setting == "selective":  # keep the products' outputs, recompute the cheap ops between them
        chosen += ['products = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",',
                   '            "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention")',
                   "saved = [getattr(torch.ops.aten, op).default for op in products if hasattr(torch.ops.aten, op)]"]
        context = ["        context_fn=functools.partial(create_selective_checkpoint_contexts, saved),"]
    return [
        "# Activation checkpointing: each wrapped module keeps only its input and recomputes its activations in",
        "# backward (batch norm's running statistics update again there; leantrain freezes them in the recomputation).",
        *chosen,
        "apply_activation_checkpointing(",
        "    model,",
        "    checkpoint_wrapper_fn=functools.partial(",
        "        checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT,", *context,
        "    ),",
        "    check_fn=lambda module: module in wrapped,",
        ")",
    ]


def _recurrent_in_fp32() -> list[str]:
    """leantrain's fallback (techniques/precision.py): a recurrent layer type that fails under autocast here, tried
    once on a tiny layer (the same draws from the RNG), runs in fp32 with autocast off inside it."""
    return [
        "# Recurrent layers this machine cannot run under autocast (oneDNN builds no bf16 LSTM on CPUs without bf16",
        "# units) stay in fp32, as leantrain keeps them: each layer type is tried once, on a tiny layer.",
        "@functools.cache",
        "def runs_under_autocast(layer_type):",
        "    layer = layer_type(4, 4, batch_first=True).to(device.type)",
        "    x = torch.randn(2, 3, 4, device=device.type, requires_grad=True)",
        "    try:",
        "        with autocast():",
        "            out = layer(x)[0]",
        "        out.float().sum().backward()",
        "        return True",
        "    except RuntimeError:",
        "        return False",
        "", "",
        "def fp32(value):  # floating tensors, also inside tuples and lists, in fp32",
        "    if isinstance(value, (tuple, list)):",
        "        return type(value)(fp32(v) for v in value)",
        "    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value",
        "", "",
        "def in_fp32(forward):",
        "    def run(*args, **kwargs):",
        "        with torch.autocast(device.type, enabled=False):",
        "            return forward(*fp32(args), **{k: fp32(v) for k, v in kwargs.items()})",
        "    return run",
        "", "",
        "for module in model.modules():",
        "    if type(module) in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN) and not runs_under_autocast(type(module)):",
        "        module.forward = in_fp32(module.forward)",
        "",
    ]


def _optimizer(c: dict[str, Any]) -> list[str]:
    decay = f", weight_decay={c['weight_decay']!r}" if c["weight_decay"] or c["optimizer"] == "adamw" else ""
    if c["optimizer"] == "adamw":
        line = f"optimizer = torch.optim.AdamW(model.parameters(), lr=LR{decay})"
    elif c["optimizer"] == "sgd":
        line = f"optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9{decay})"
    else:  # auto-adam unresolved: the plain loop, listed at the top
        kernel = ADAM_KERNELS.get(c["optimizer"], ADAM_KERNELS["adam"])
        line = f"optimizer = torch.optim.Adam(model.parameters(), lr=LR{decay}, {kernel})"
    return [line, *(_schedule(c) if c["schedule"] == "warmup-cosine" else []), "", ""]


def _schedule(c: dict[str, Any]) -> list[str]:
    floor = c["min_lr_ratio"]
    return [
        "steps = math.ceil(len(x_train) / BATCH_SIZE) * EPOCHS  # optimizer steps planned", "", "",
        "def warmup_cosine(step):",
        f'    """leantrain\'s warmup-cosine as a factor of LR: linear warmup over {c["warmup"]:g} of the steps, then '
        f'cosine to {floor:g}."""',
        f"    warmup = round({c['warmup']!r} * steps)",
        "    if step < warmup:",
        "        return (step + 1) / warmup",
        "    progress = min(1.0, (step - warmup) / max(1, steps - warmup))",
        f"    return {floor!r} + (1 - {floor!r}) * 0.5 * (1.0 + math.cos(math.pi * progress))",
        "", "",
        "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)  # stepped after every optimizer step",
    ]


def _loss(c: dict[str, Any]) -> list[str]:
    smoothing = (f", label_smoothing={c['label_smoothing']!r} if torch.is_grad_enabled() else 0.0"
                 if c["label_smoothing"] else "")
    key = c["output_key"]
    pick = "" if key is None else f"[{int(key) if str(key).isdigit() else repr(key)}]"
    return [
        "def loss_sum(x, y):",
        '    """The batch\'s loss summed over its units (samples, or tokens), and how many units: leantrain\'s loss for',
        "    this data set's task. A step's gradient is of the mean per unit; an epoch's loss is averaged per unit."
        + (" Labels" if smoothing else ""),
        *(["    are smoothed in training only."] if smoothing else []),
        '    """',
        '    if data.task == "seq2seq":  # teacher forcing: the model reads y[:, :-1] and predicts y[:, 1:]; 0 pads',
        "        logits, target = forward(x, y[:, :-1]), y[:, 1:]",
        "        logits = logits[0] if isinstance(logits, tuple) else logits",
        "        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=0, "
        f'reduction="sum"{smoothing})',
        "        return loss, int((target != 0).sum())",
        f"    output = forward(x){pick}",
        '    if data.task == "classification":',
        f'        return F.cross_entropy(output.float(), y, reduction="sum"{smoothing}), len(y)',
        '    if data.task == "language-model":',
        f'        return F.cross_entropy(output.flatten(0, 1).float(), y.flatten(), reduction="sum"{smoothing}), '
        "y.numel()",
        '    return F.mse_loss(output.float(), y.float(), reduction="sum"), y.numel()  # regression, reconstruction',
        "", "",
    ]


def _batches(c: dict[str, Any]) -> list[str]:
    seeded = "torch.Generator().manual_seed(SEED * 100_003 + epoch)"
    if c["loader"] == "dataloader":
        body = ['    """PyTorch\'s DataLoader, shuffled by a generator seeded by (SEED, epoch) as leantrain\'s is."""',
                f"    generator = {seeded}",
                "    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH_SIZE, shuffle=True, "
                "generator=generator)",
                "    for x, y in loader:",
                "        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)"]
    else:
        body = ['    """Slices of the tensors on the device, in a permutation per epoch seeded by (SEED, epoch), as '
                "leantrain's",
                '    tensor loader takes them; the last batch is short."""',
                f"    order = torch.randperm(len(x_train), generator={seeded}).to(device)",
                "    for start in range(0, len(order), BATCH_SIZE):",
                "        index = order[start : start + BATCH_SIZE]",
                "        yield x_train.index_select(0, index), y_train.index_select(0, index)"]
    return ["def batches(epoch):", *body, "", ""]


def _validation() -> list[str]:
    return [
        "@torch.no_grad()",
        "def validate():",
        '    """The validation loss per unit over the whole split, in the training precision."""',
        "    model.eval()",
        "    total, units = torch.zeros((), device=device), 0",
        "    for start in range(0, len(x_val), EVAL_BATCH_SIZE):",
        "        with autocast():",
        "            loss, n = loss_sum(x_val[start : start + EVAL_BATCH_SIZE], y_val[start : start + EVAL_BATCH_SIZE])",
        "            total += loss",
        "        units += n",
        "    return total.item() / units",
        "", "",
    ]


def _training(c: dict[str, Any]) -> list[str]:
    fp16, clip = c["precision"] == "fp16", c["grad_clip"]
    step = ["        scaler.scale(loss / n).backward()" if fp16 else "        (loss / n).backward()"]
    if clip is not None:
        step += ["        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones"] if fp16 else []
        step.append(f"        torch.nn.utils.clip_grad_norm_(model.parameters(), {clip!r}, foreach=True)")
    step += ["        scaler.step(optimizer)  # skipped when the gradients hold inf/NaN", "        scaler.update()"] \
        if fp16 else ["        optimizer.step()"]
    step.append("        optimizer.zero_grad(set_to_none=True)")
    step += ["        scheduler.step()"] if c["schedule"] == "warmup-cosine" else []
    return [
        "for epoch in range(EPOCHS):",
        "    model.train()",
        "    step_losses, units = [], 0",
        "    for x, y in batches(epoch):",
        "        with autocast():",
        "            loss, n = loss_sum(x, y)",
        *step,
        "        step_losses.append(loss.detach())  # added up at the epoch's end: no host sync per step",
        "        units += n",
        "    train_loss = sum(torch.stack(step_losses).tolist()) / units",
        '    print(f"epoch {epoch + 1} train_loss {train_loss!r} val_loss {validate()!r}", flush=True)',
    ]
