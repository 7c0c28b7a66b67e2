"""Ship seed 004's model: a training checkpoint (or a model file) written as the model ``leantrain predict`` and
``leantrain evaluate`` use when none is named (leantrain/shipped/polynomial.model.pt): its weights in fp16 where
the fp16 copy decodes held-out *generated* lines exactly as the fp32 weights do, else in fp32 (the real lines are
for reporting, never for choosing). Refused above MAX_BYTES. Several checkpoints of one run (copies taken as it
went) are averaged, weight by weight, into one model; whether that beats the last of them is for held-out generated
lines to say.

    python benchmarks/seed004_ship.py results/seed004-best/transformer-d128-default-s0.ckpt [--check 5000]
    python benchmarks/seed004_ship.py copies/a.ckpt copies/b.ckpt copies/c.ckpt --out averaged.model.pt
    leantrain evaluate --data polynomial-file:path=../shared/data/polynomial/real-val-100k.txt
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import leantrain as lt
from leantrain import models
from leantrain.data.polynomial import generate_lines
from leantrain.inference.lines import LineDecoder
from leantrain.inference.model_file import load_model, save_model
from leantrain.inference.shipped import shipped_path
from leantrain.machine import cpu_name
from leantrain.registry import parse_spec
from leantrain.train.checkpoint import load as load_checkpoint

CHECK_SEED = 977  # the generator's seed for the check lines: not training's (0), not the real file
MAX_BYTES = 10_000_000  # what the repository carries


def _from_checkpoint(path: Path) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """(weights, model spec, data spec, provenance) of a training checkpoint: the weights of its last step."""
    saved = load_checkpoint(path)
    config = saved["config"]
    progress = saved.get("progress") or {}
    training_s = sum(r["time_s"] for r in saved["records"]) + progress.get("elapsed_s", 0.0)
    provenance = {"checkpoint": path.name, "epochs_done": saved["epoch"], "step": saved["step"],
                  "samples_seen": saved["samples_seen"], "training_s": round(training_s, 1),
                  "schedule": saved.get("technique_labels")}
    started = saved.get("initialized_from")
    if started:  # init_from: this run went on from a model file; the totals count what made that file too
        before = _made_by(started.get("record"))
        provenance["started_from"] = {**{k: v for k, v in started.items() if k != "record"}, **before}
        if "samples_seen" in before and "training_s" in before:
            provenance["total_samples_seen"] = before["samples_seen"] + saved["samples_seen"]
            provenance["total_training_s"] = round(before["training_s"] + training_s, 1)
    return saved["model"], config["model"], config["data"], provenance


def _averaged(paths: list[Path]) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """The checkpoints' weights averaged (the newest one's where a tensor is not floating point), with the newest
    one's specs and provenance and the list of what was averaged. They must be of one run: model, data, start."""
    loaded = sorted((_from_checkpoint(path) for path in paths), key=lambda each: each[3]["samples_seen"])
    weights, model_spec, data_spec, provenance = loaded[-1]
    identity = (model_spec, data_spec, provenance.get("started_from"))
    for _, other_model, other_data, other in loaded:
        if (other_model, other_data, other.get("started_from")) != identity:
            sys.exit(f"{other['checkpoint']}: another run than {provenance['checkpoint']} (model, data or starting "
                     "weights differ); not averaged")
    averaged = {name: (torch.stack([each[0][name].float() for each in loaded]).mean(0).to(tensor.dtype)
                       if tensor.is_floating_point() else tensor) for name, tensor in weights.items()}
    provenance["averaged"] = [{"checkpoint": each[3]["checkpoint"], "samples_seen": each[3]["samples_seen"]}
                              for each in loaded]
    return averaged, model_spec, data_spec, provenance


def _made_by(record: str | None) -> dict[str, Any]:
    """What a model file shipped by this script said of its own making (its ``record``, as the checkpoint copied it
    when the run started from the file): its samples and training time, over all its phases where it had several."""
    try:
        made = json.loads(record or "")
    except ValueError:
        return {}
    if not isinstance(made, dict):
        return {}
    out = {key: made[key] for key in ("samples_seen", "training_s") if key in made}
    out.update({key: made[f"total_{key}"] for key in ("samples_seen", "training_s") if f"total_{key}" in made})
    return out


def _stand_in(data_spec: str) -> Any:
    """The data set's shapes and vocabulary from a few lines (the model file keeps those, not the data)."""
    name, options = parse_spec(data_spec)
    options.update(n="64", val_fraction="0.5")
    return lt.data.load(name + ":" + ",".join(f"{k}={v}" for k, v in options.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="+",
                        help="a training checkpoint (*.ckpt) or a model file (*.model.pt); several checkpoints of one "
                             "run are averaged")
    parser.add_argument("--out", type=Path, default=shipped_path())
    parser.add_argument("--check", type=int, default=5000,
                        help="generated lines the fp16 copy must decode alike (0: no check, fp32 weights)")
    args = parser.parse_args()
    if len(args.source) > 1:
        if any(path.suffix != ".ckpt" for path in args.source):
            parser.error("only training checkpoints (*.ckpt) are averaged")
        weights, model_spec, data_spec, provenance = _averaged(args.source)
    elif args.source[0].suffix == ".ckpt":
        weights, model_spec, data_spec, provenance = _from_checkpoint(args.source[0])
    else:
        saved = load_model(args.source[0])
        weights, model_spec, data_spec = saved.model.state_dict(), saved.model_spec, saved.data_spec
        provenance = {"model_file": args.source[0].name, "record": saved.record}
    data = _stand_in(data_spec)
    model = models.build(model_spec, data)
    model.load_state_dict(weights)
    provenance.update(cpu=cpu_name(), capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                      python=platform.python_version())
    lines = [line.partition("=")[0] for line in generate_lines(args.check, seed=CHECK_SEED)]
    with tempfile.TemporaryDirectory() as tmp:
        full = save_model(Path(tmp) / "fp32.model.pt", model, model_spec=model_spec, data_spec=data_spec, data=data)
        half = save_model(Path(tmp) / "fp16.model.pt", model, model_spec=model_spec, data_spec=data_spec, data=data,
                          weights_dtype=torch.float16)
        expected = LineDecoder(load_model(full), batch_size=1000).predict(lines)
        got = LineDecoder(load_model(half), batch_size=1000).predict(lines)
        differ = sum(a != b for a, b in zip(expected, got)) if lines else None
    provenance["weights"] = "fp16" if differ == 0 else "fp32"
    provenance["check"] = (f"fp16 weights decoded {differ} of {len(lines)} generated lines (seed {CHECK_SEED}) "
                           f"unlike fp32: {provenance['weights']} shipped") if lines else "not checked: fp32 shipped"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        written = save_model(Path(tmp) / args.out.name, model, model_spec=model_spec, data_spec=data_spec, data=data,
                             record=json.dumps(provenance), weights_dtype=torch.float16 if differ == 0 else None)
        if written.stat().st_size > MAX_BYTES:
            sys.exit(f"{written.stat().st_size:,} bytes: over the {MAX_BYTES:,} the repository carries; not shipped")
        written.replace(args.out)
    print(f"shipped: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); {provenance['check']}")
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
