"""Third-party models by name, built with fresh weights (never pretrained, never downloaded):

- ``timm:NAME[:key=value,...]``: ``timm.create_model(NAME, pretrained=False, **options)`` (``leantrain[vision]``);
- ``torchvision:NAME[:...]``: ``torchvision.models.get_model(NAME, weights=None, **options)`` (``leantrain[vision]``);
- ``hf:TYPE[:...]``: ``transformers.AutoConfig.for_model(TYPE, **options)``, then ``AutoModelFor<task>.from_config``
  (``leantrain[hf]``), wrapped in ``HuggingFaceModel``.

Sized from the data unless an option says otherwise: ``num_classes`` from the data's classes (timm, torchvision),
timm's ``in_chans`` from the images' channels; for ``hf:``, ``num_labels``, ``vocab_size``, ``pad_token_id`` (the
data's pad index), ``image_size`` and ``num_channels``.

Hugging Face conventions: the task (``task=`` to choose) follows the data's: token ids (N, L) of a classification
(or regression) set -> ``sequence-classification``; images (N, C, H, W) -> ``image-classification``; a
language-model set -> ``causal-lm``. The data's tensor goes in as ``input_ids`` (``pixel_values`` for images) with
``attention_mask = input_ids != pad index`` where the data has one; dict inputs are passed as keywords. The model
returns a ``ModelOutput``: a run on an ``hf:`` model takes ``output_key`` ``logits`` unless told otherwise. Option
names are checked against the model type's config (transformers would silently keep a misspelt key).
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn

from leantrain.errors import UsageError
from leantrain.models.user import _literal
from leantrain.registry import coerce_option, parse_spec


@dataclass(frozen=True)
class Source:
    package: str  # the module imported
    extra: str  # pip install 'leantrain[<extra>]'
    form: str  # how a spec is written


SOURCES = {
    "timm": Source("timm", "vision", "timm:NAME[:key=value,...] (timm.list_models() names them)"),
    "torchvision": Source("torchvision", "vision", "torchvision:NAME[:key=value,...] (torchvision.models.list_models())"),
    "hf": Source("transformers", "hf", "hf:MODEL_TYPE[:key=value,...] (a config's model_type: bert, gpt2, vit, ...)"),
}
# task -> (the AutoModel class, the keyword the data's tensor is passed as)
HF_TASKS = {
    "sequence-classification": ("AutoModelForSequenceClassification", "input_ids"),
    "causal-lm": ("AutoModelForCausalLM", "input_ids"),
    "image-classification": ("AutoModelForImageClassification", "pixel_values"),
}
# Errors a constructor raises for options it cannot take: the user's to fix, in one line.
BUILD_ERRORS = (TypeError, ValueError, KeyError, AssertionError, RuntimeError, AttributeError)


def is_thirdparty_spec(spec: str) -> bool:
    return spec.partition(":")[0].strip() in SOURCES


def split(spec: str) -> tuple[str, str, dict[str, str]]:
    """'timm:resnet18:num_classes=10' -> ('timm', 'resnet18', {'num_classes': '10'})."""
    source, _, rest = spec.partition(":")
    name, _, options = rest.partition(":")
    if not name.strip():
        raise UsageError(f"model {spec!r} names no model; write {SOURCES[source.strip()].form}")
    _, overrides = parse_spec(f"x:{options}") if options else ("", {})
    return source.strip(), name.strip(), overrides


def default_output_key(spec: str) -> str | None:
    """A Hugging Face model returns a ModelOutput: the loss takes its ``logits``."""
    return "logits" if spec.partition(":")[0].strip() == "hf" else None


def package(source: str, spec: str) -> Any:
    """The source's package, or one line naming the extra to install."""
    info = SOURCES[source]
    if source == "hf":  # nothing in transformers may reach the network: configs are built here, never fetched
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return importlib.import_module(info.package)
    except ImportError as e:
        raise UsageError(f"model {spec!r} needs {info.package}, which is not installed ({e}); "
                         f"install it with: pip install 'leantrain[{info.extra}]'") from None
    except (RuntimeError, OSError) as e:  # torchvision built for another torch: "operator torchvision::nms ..."
        raise UsageError(f"model {spec!r}: {info.package} does not import beside torch {torch.__version__} "
                         f"({type(e).__name__}: {_first_line(e)}); install a matching pair: "
                         f"pip install 'leantrain[{info.extra}]' (see the README's .venv-vision)") from None


def check(spec: str) -> None:
    """The package imports and knows the name (and, for hf:, the option names), without building anything."""
    source, name, options = split(spec)
    module = package(source, spec)
    if source == "timm":
        if not module.is_model(name):
            _unknown(spec, name, module.list_models())
    elif source == "torchvision":
        names = module.models.list_models()
        if name not in names:
            _unknown(spec, name, names)
    else:
        hf_config(module, spec, name, {k: v for k, v in options.items() if k != "task"})
        if "task" in options and options["task"] not in HF_TASKS:
            raise UsageError(f"model {spec!r}: task={options['task']!r} is unknown; choose one of: {', '.join(HF_TASKS)}")


def _unknown(spec: str, name: str, names: list[str]) -> NoReturn:
    what = {"hf": "transformers has no model type"}.get(spec.partition(":")[0].strip(), f"{spec.partition(':')[0]} has no model")
    raise UsageError(f"model {spec!r}: {what} {name!r} ({len(names)} known{_close(name, names)})")


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=4)
    return f"; close: {', '.join(close)}" if close else ""


def build(spec: str, data: Any) -> nn.Module:
    """The model a third-party spec names, sized from ``data`` where its options do not say."""
    check(spec)
    source, name, options = split(spec)
    module = package(source, spec)
    if source == "hf":
        return build_hf(module, spec, name, options, data)
    kwargs = {key: _literal(value) for key, value in options.items()}
    if data.task == "classification" and data.num_classes and "num_classes" not in kwargs:
        kwargs["num_classes"] = data.num_classes
    channels = _image_channels(data)
    if source == "timm":
        if channels not in (None, 3) and "in_chans" not in kwargs:
            kwargs["in_chans"] = channels
        return _built(spec, lambda: module.create_model(name, pretrained=False, **kwargs))
    if channels not in (None, 3):
        raise UsageError(f"model {spec!r}: torchvision's models take 3-channel images; {data.name} has {channels} "
                         f"(timm:{name} takes in_chans)")
    return _built(spec, lambda: module.models.get_model(name, weights=None, **kwargs))


def _image_channels(data: Any) -> int | None:
    x = data.x_train
    return int(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() else None


def _built(spec: str, make: Any) -> nn.Module:
    try:
        model = make()
    except BUILD_ERRORS as e:
        raise UsageError(f"model {spec!r} cannot be built: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


# --- Hugging Face ---------------------------------------------------------------------------------------------------


def hf_config(transformers: Any, spec: str, model_type: str, options: dict[str, Any]) -> Any:
    """The model type's config with the options, their names checked and text coerced to the defaults' types."""
    try:
        default = transformers.AutoConfig.for_model(model_type)
    except ValueError:
        _unknown(spec, model_type, list(transformers.models.auto.configuration_auto.CONFIG_MAPPING.keys()))
    known = {**default.to_dict(), **{k: getattr(default, k, None) for k in default.attribute_map},
             "num_labels": default.num_labels}
    kwargs = {}
    for key, value in options.items():
        if key not in known:
            raise UsageError(f"model {spec!r}: {model_type}'s config has no option {key!r}{_close(key, list(known))}")
        if not isinstance(value, str):  # sized from the data: typed already
            kwargs[key] = value
        else:
            kwargs[key] = _literal(value) if known[key] is None else coerce_option("model", spec, key, value, known[key])
    try:
        return transformers.AutoConfig.for_model(model_type, **kwargs)
    except BUILD_ERRORS as e:
        raise UsageError(f"model {spec!r}: bad config: {type(e).__name__}: {_first_line(e)}") from None


def hf_task(spec: str, options: dict[str, str], data: Any) -> str:
    """The task given as ``task=``, else the one the data's shape and task call for."""
    if "task" in options:
        return options["task"]
    x = data.x_train
    images = isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()
    if data.task == "language-model":
        return "causal-lm"
    if data.task in ("classification", "regression"):
        return "image-classification" if images else "sequence-classification"
    raise UsageError(f"model {spec!r}: no Hugging Face head is chosen for {data.task} data; give task= "
                     f"({', '.join(HF_TASKS)})")


def hf_sizes(task: str, data: Any) -> dict[str, Any]:
    """Config values the data decides: classes, vocabulary, padding, image size."""
    x = data.x_train
    sizes: dict[str, Any] = {}
    if task == "image-classification" and isinstance(x, torch.Tensor) and x.dim() == 4:
        sizes.update(num_channels=int(x.shape[1]), image_size=int(x.shape[2]))
    if task != "causal-lm":
        targets = data.y_train
        width = int(targets.shape[1]) if targets.dim() > 1 else 1
        sizes["num_labels"] = data.num_classes if data.task == "classification" and data.num_classes else width
    if "vocab_size" in data.info:
        sizes["vocab_size"] = int(data.info["vocab_size"])
    if data.info.get("pad_index") is not None:
        sizes["pad_token_id"] = int(data.info["pad_index"])
    if task == "causal-lm":
        sizes["is_decoder"] = True  # an encoder type (bert) as a causal LM attends to the past only
    return sizes


def build_hf(transformers: Any, spec: str, model_type: str, options: dict[str, str], data: Any) -> nn.Module:
    task = hf_task(spec, options, data)
    given = {k: v for k, v in options.items() if k != "task"}
    default = hf_config(transformers, spec, model_type, {})
    sized = {k: v for k, v in hf_sizes(task, data).items() if k not in given and (k == "num_labels" or hasattr(default, k))}
    config = hf_config(transformers, spec, model_type, {**sized, **_ids_outside(default, {**sized, **given}), **given})
    _check_positions(spec, config, data, HF_TASKS[task][1])
    auto = getattr(transformers, HF_TASKS[task][0])
    try:
        model = auto.from_config(config)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise UsageError(f"model {spec!r} cannot be built: {_first_line(e)}") from None
        others = [t for t in HF_TASKS if t != task]
        raise UsageError(f"model {spec!r}: transformers has no {task} model for {model_type!r}; choose another type, "
                         f"or task= ({', '.join(others)})") from None
    except BUILD_ERRORS as e:
        raise UsageError(f"model {spec!r} cannot be built: {type(e).__name__}: {_first_line(e)}") from None
    return HuggingFaceModel(model, HF_TASKS[task][1], data.info.get("pad_index"))


def _ids_outside(default: Any, options: dict[str, Any]) -> dict[str, None]:
    """Default special ids a smaller vocabulary leaves out of range (gpt2's 50256 in 256 ids), unset: no sample
    holds them, and transformers would warn about each."""
    vocab = int(options.get("vocab_size", getattr(default, "vocab_size", 0)) or 0)
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {k: None for k in keys if isinstance(getattr(default, k, None), int) and getattr(default, k) >= vocab > 0}


def _check_positions(spec: str, config: Any, data: Any, input_name: str) -> None:
    positions = getattr(config, "max_position_embeddings", None)
    x = data.x_train
    if input_name == "input_ids" and isinstance(x, torch.Tensor) and x.dim() == 2 and isinstance(positions, int) \
            and positions < x.shape[1]:
        raise UsageError(f"model {spec!r}: sequences of {x.shape[1]} tokens exceed its {positions} positions; "
                         f"give max_position_embeddings={x.shape[1]} (or shorter sequences)")


class HuggingFaceModel(nn.Module):
    """A transformers model called as leantrain calls models: ``model(x)`` with x the token ids (``input_ids``,
    and an attention mask off the padding) or the images (``pixel_values``); a dict batch goes in as keywords."""

    def __init__(self, model: nn.Module, input_name: str, pad_index: int | None):
        super().__init__()
        self.hf, self.input_name, self.pad_index = model, input_name, pad_index

    def forward(self, x: Any = None, **inputs: Any) -> Any:
        if x is not None:
            inputs[self.input_name] = x
        ids = inputs.get("input_ids")
        if self.pad_index is not None and ids is not None and "attention_mask" not in inputs:
            inputs["attention_mask"] = (ids != self.pad_index).long()
        return self.hf(**inputs)
