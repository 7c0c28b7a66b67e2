"""The recipe to keep (issue 26, item 4): the recommended recipe written down in every form a user may train with.

``write_recipe`` writes, into the advice's folder:

- ``recipe.toml``: an experiment file that reruns the user's recipe (the baseline) against the recommended one
  (``leantrain run recipe.toml``), two seeds, time to the baseline's final metric;
- ``train_plain.py``: the recommended recipe as a plain PyTorch script (plain_script.py), and, when it differs from
  the baseline, ``train_baseline_plain.py`` and ``recipe.patch``, the diff between the two: what to change in a
  hand-written loop;

and returns the Markdown section the advice embeds: those files, the ``leantrain train`` command, the ``lt.fit(...)``
call, Lightning and Accelerate arguments, and the settings only leantrain carries out. Only settings that differ
from RunConfig's defaults are written, so each form stays short. Every form is generated from the two
``RunConfig.to_dict()`` alone, and tests run each one.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leantrain.advice.equivalents import accelerate, leantrain_only, lightning, no_framework_equivalent, your_code
from leantrain.advice.plain_script import plain_script, script_patch
from leantrain.advice.recipe_values import SET_PER_RUN, changed, defaults, described, flag, flag_value, non_default, toml_value
from leantrain.config import MAX_SEED
from leantrain.fileio import write_atomic

TOML, PLAIN, BASELINE_PLAIN, PATCH = "recipe.toml", "train_plain.py", "train_baseline_plain.py", "recipe.patch"
TARGET_TOLERANCE = 0.005  # seed 001's band: the recommended recipe must reach the baseline's final metric less 0.5%
FIT_OWN = ("model", "data", "epochs")  # fit's positional arguments and its epochs keyword


@dataclass(frozen=True)
class Recipe:
    markdown: str  # the section the advice embeds: headings and code blocks
    files: list[Path]  # what was written, in the order the section names them


def write_recipe(folder: Path, baseline: dict[str, Any], recommended: dict[str, Any], *, name: str = "advice",
                 checkpointed: Sequence[str] | None = None) -> Recipe:
    """Write the recipe's files into ``folder`` and return its Markdown section. ``baseline`` and ``recommended``
    are ``RunConfig.to_dict()``s (``auto`` settings already chosen); when they are the same, the files hold the
    baseline alone and the section says to keep it. ``checkpointed``: the modules the recommended run wrapped for
    activation checkpointing (its record's list), so the plain script wraps the same ones."""
    keep = not {k: v for k, v in changed(baseline, recommended).items() if k != "name"}
    texts = {TOML: experiment_toml(baseline, recommended, name, keep=keep),
             PLAIN: plain_script(recommended, title="your recipe" if keep else "the recommended recipe",
                                 checkpointed=checkpointed)}
    if not keep:
        texts[BASELINE_PLAIN] = plain_script(baseline, title="your recipe (the baseline)")
        texts[PATCH] = script_patch(texts[BASELINE_PLAIN], texts[PLAIN], BASELINE_PLAIN, PLAIN)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for file_name, text in texts.items():  # all generated before the first is written: nothing half-written
        write_atomic(folder / file_name, text)
        files.append(folder / file_name)
    return Recipe(_markdown(baseline, recommended, texts, keep), files)


def experiment_toml(baseline: dict[str, Any], recommended: dict[str, Any], name: str, *, keep: bool = False) -> str:
    """An experiment file (leantrain/experiments/runner.py) of the two recipes: the settings they share under
    [defaults], each one's own under [recipes.baseline] and [recipes.recommended] (the recommended one alone when
    ``keep``: then only the baseline is rerun)."""
    differing = {k: v for k, v in changed(baseline, recommended).items() if k not in SET_PER_RUN}
    shared = {k: v for k, v in non_default(recommended).items() if k not in differing and k not in SET_PER_RUN}
    seed = int(baseline.get("seed", 0))
    seeds = [seed, seed + 1] if seed < MAX_SEED else [seed - 1, seed]
    what = "your recipe (nothing beat it)" if keep else "your recipe (baseline) against the recommended one"
    lines = [
        f"# leantrain advise: {what}. Rerun: leantrain run {TOML}", "",
        "[experiment]", f"name = {toml_value(name)}", f"description = {toml_value('leantrain advise: ' + what)}",
        'baseline = "baseline"', f"seeds = [{seeds[0]}, {seeds[1]}]", 'target = "baseline-final"',
        f"target_tolerance = {TARGET_TOLERANCE}", "", "[defaults]", *_toml_lines(shared), "", "[recipes.baseline]",
        *_toml_lines({k: before for k, (before, _) in differing.items()}),
    ]
    if not keep:
        lines += ["", "[recipes.recommended]", *_toml_lines({k: after for k, (_, after) in differing.items()})]
    return "\n".join(lines) + "\n"


def _toml_lines(values: dict[str, Any]) -> list[str]:
    """``key = value`` lines; a None (the default of every key that takes one) is left out: the key then takes it."""
    known = defaults()
    for key, value in values.items():
        if value is None and known.get(key) is not None:
            raise ValueError(f"{key} = None cannot be written in TOML, and is not {key}'s default")
    return [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]


def train_argv(config: dict[str, Any]) -> list[str]:
    """``leantrain train`` with its model, data and epochs, and a flag for every other non-default setting of ``config``
    (a None is a default: left out)."""
    c = {**defaults(), **config}
    given = {"model": c["model"], "data": c["data"], "epochs": c["epochs"], **non_default(config)}  # always named
    argv = ["leantrain", "train"]
    for key, value in given.items():
        if value is not None:
            argv += [flag(key), flag_value(value)]
    return argv


def train_command(argv: list[str], width: int = 100) -> str:
    """The command as a shell line, wrapped between flags with backslashes."""
    lines, line = [], shlex.join(argv[:2])
    for index in range(2, len(argv), 2):
        pair = shlex.join(argv[index : index + 2])
        if len(line) + 1 + len(pair) > width:
            lines.append(line + " \\")
            line = "  " + pair
        else:
            line += " " + pair
    return "\n".join([*lines, line])


def fit_call(config: dict[str, Any]) -> str:
    """The ``lt.fit(...)`` call for ``config``: the same data and model, built as ``leantrain train`` builds them."""
    c = {**defaults(), **config}
    options = {k: v for k, v in non_default(config).items() if k not in FIT_OWN}
    if isinstance(options.get("output_key"), str) and options["output_key"].isdigit():
        options["output_key"] = int(options["output_key"])  # fit takes a tuple's index as a number
    arguments = ["model", "data", f"epochs={c['epochs']}", *(f"{k}={_python(v)}" for k, v in options.items())]
    call, line = [], "result = lt.fit("
    for index, argument in enumerate(arguments):
        text = argument + (", " if index < len(arguments) - 1 else ")")
        if len(line) + len(text) > 100:
            call.append(line.rstrip())
            line = "    "
        line += text
    return "\n".join([
        "import torch", "", "import leantrain as lt", "from leantrain.models import build", "",
        f"torch.manual_seed({c['seed']})  # as leantrain train seeds: the same data and initial weights",
        f"data = lt.data.load({_python(c['data'])}, seed={c['seed']})",
        f"model = build({_python(c['model'])}, data)  # or your own nn.Module", *call, line,
        'print(result.epochs[-1]["train_loss"])',
    ])


def _python(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _markdown(baseline: dict[str, Any], recommended: dict[str, Any], texts: dict[str, str], keep: bool) -> str:
    files = ", ".join(f"`{name}`" for name in texts)
    parts = [
        "## The recipe to keep", "", _summary(baseline, recommended, keep), "", f"Written beside this file: {files}.", "",
        f"### Rerun the comparison: `{TOML}`", "",
        f"`leantrain run {TOML}` trains " + ("your recipe again" if keep else "your recipe and the recommended one")
        + ", two seeds each, to your recipe's final metric:", "", "```toml", texts[TOML].rstrip(), "```", "",
        "### `leantrain train`", "", "```sh", train_command(train_argv(recommended)), "```", "",
        "### Python: `lt.fit`", "", "```python", fit_call(recommended), "```", "",
        *_plain_section(texts, keep), *_frameworks_section(recommended), *_leantrain_only_section(recommended),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _summary(baseline: dict[str, Any], recommended: dict[str, Any], keep: bool) -> str:
    if keep:
        return ("**Keep your recipe**: nothing measured beat it beyond its spread. Here it is as an experiment to "
                "rerun, a command, a `fit` call and plain PyTorch.")
    changes = [f"`{key}` {described(before)} → {described(after)}"
               for key, (before, after) in changed(baseline, recommended).items() if key != "name"]
    return "**Recommended**, changed from your recipe: " + ", ".join(changes) + "."


def _plain_section(texts: dict[str, str], keep: bool) -> list[str]:
    if keep:
        return ["### Plain PyTorch", "", f"`{PLAIN}` is your recipe as a complete PyTorch script (`python {PLAIN}`); "
                "it prints the per-epoch training loss `leantrain train` records.", ""]
    return ["### Plain PyTorch: the patch for a hand-written loop", "",
            f"`{PLAIN}` is the recommended recipe as a complete PyTorch script (`python {PLAIN}`; it prints the "
            f"per-epoch training loss `leantrain train` records). `{PATCH}` turns your recipe's script "
            f"(`{BASELINE_PLAIN}`) into it; the same lines change in your own loop:", "",
            "```diff", texts[PATCH].rstrip(), "```", ""]


def _frameworks_section(config: dict[str, Any]) -> list[str]:
    trainer, accelerator = lightning(config), accelerate(config)
    lines = ["### Lightning and Accelerate", "", "```python",
             f"trainer = lightning.Trainer({', '.join(trainer.arguments)})",
             f"accelerator = accelerate.Accelerator({', '.join(accelerator.arguments)})", "```", "",
             f"Neither constructor takes these; they stay in your code, as in `{PLAIN}`: "
             + ", ".join(your_code(config)) + ".",
             "Lightning also: " + ", ".join(trainer.in_your_code) + ".",
             "Accelerate also: " + ", ".join(accelerator.in_your_code) + "."]
    missing = no_framework_equivalent(config)
    if missing:
        lines += ["", "No equivalent in either:", "", *(f"- {line}" for line in missing)]
    return [*lines, ""]


def _leantrain_only_section(config: dict[str, Any]) -> list[str]:
    kept = leantrain_only(config)
    if not kept:
        return ["### Keep leantrain for these", "", f"Nothing: every setting of this recipe is in `{PLAIN}`."]
    return ["### Keep leantrain for these", "",
            f"These settings have no plain-PyTorch equivalent in `{PLAIN}` (it names them in a comment); train with "
            "leantrain to keep them:", "", *(f"- `{setting}`: {why}" for setting, why in kept)]
