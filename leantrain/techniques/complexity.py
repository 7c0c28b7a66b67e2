"""Complexity matching (seed 000): grow the hidden width while it helps, without changing the function.

Training starts with a narrow hidden layer. When validation loss plateaus (no ``min_delta`` relative
gain for ``patience`` epochs), every hidden layer is widened by ``factor``, function-preservingly:
the outputs right after widening are the same (up to float rounding). Two ways:

- "net2net" (Chen, Goodfellow & Shlens 2016, Net2WiderNet): each new unit copies a random unit's
  incoming weights; the outgoing weights of a unit and its copies are split in random shares summing
  to one. Under SGD the unequal shares give the copies different gradients, so they drift apart. Under
  Adam they do not: a copy's incoming-weight gradient is its share times the source's, and Adam's
  per-coordinate normalisation cancels that factor, so copies stay clones and the wider layer adds no
  capacity (measured here: widening 4 -> 8 units bought nothing in 3 epochs).
- "fresh" (default): new units get freshly initialised incoming weights and ZERO outgoing weights, so
  the function is exactly unchanged and the new units are not clones; their outgoing weights get a
  gradient at once (their activations are non-zero) and they start learning.

When a widening did not lower the best validation loss by ``min_gain`` (relative), growth stops: the
data do not need more capacity. With ``prune`` the layer then shrinks back to the previous width,
keeping the units with the largest |incoming| x |outgoing| weight norms (not function-preserving).
An easy data set therefore ends narrower than a hard one.

Adam state is carried over, not reset: old units keep their moments; fresh units start at zero
moments; Net2Net copies take their source's outgoing-weight moments (same gradient) and incoming-weight
moments scaled by their share f (gradient f times the source's): exp_avg x f, exp_avg_sq x f^2.

Works on models that expose ``linear_layers()`` / ``set_linear_layers(layers)`` (leantrain's ``mlp``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register

# Powers of the split fraction applied to (rows, columns) of each kind of tensor shaped like a weight.
_POWERS = {"param": (0, 1), "exp_avg": (1, 0), "momentum_buffer": (1, 0), "exp_avg_sq": (2, 0), "max_exp_avg_sq": (2, 0)}


@dataclass
class UnitMap:
    """How one hidden layer was resized: new unit j comes from old unit ``source[j]`` with outgoing share
    ``fraction[j]``; ``fresh`` marks new units that start from new random incoming weights instead."""

    source: torch.Tensor
    fraction: torch.Tensor
    fresh: torch.Tensor | None = None  # bool per new unit


def plan_widening(old_width: int, new_width: int, generator: torch.Generator, method: str = "fresh") -> UnitMap:
    """Net2Net ("net2net"): copies of random units, outgoing weights split in random shares summing to one.
    "fresh": new units with random incoming and zero outgoing weights. Both leave the function unchanged."""
    extra = new_width - old_width
    source = torch.cat([torch.arange(old_width), torch.randint(0, old_width, (extra,), generator=generator)])
    if method == "fresh":
        fraction = torch.cat([torch.ones(old_width, dtype=torch.float64), torch.zeros(extra, dtype=torch.float64)])
        return UnitMap(source, fraction, torch.arange(new_width) >= old_width)
    share = torch.rand(new_width, generator=generator, dtype=torch.float64) + 0.5  # unequal shares
    total = torch.zeros(old_width, dtype=torch.float64).index_add_(0, source, share)
    return UnitMap(source, share / total[source])


def widen_tensor(t: torch.Tensor, rows: UnitMap | None, cols: UnitMap | None, kind: str = "param") -> torch.Tensor:
    """Apply a layer's unit maps to a weight (2-D) or bias (1-D) shaped tensor, or to optimizer moments of one.

    Fresh units get zero outgoing weights (fraction 0) and zero optimizer moments; their random
    incoming weights are drawn by ``remap_layers``.
    """
    row_pow, col_pow = _POWERS.get(kind, (1, 0))
    out = t
    if cols is not None and t.dim() == 2:
        out = out[:, cols.source.to(t.device)] * cols.fraction.to(t.device, t.dtype).pow(col_pow)
        if cols.fresh is not None and kind != "param":
            out[:, cols.fresh.to(t.device)] = 0
    if rows is not None:
        factor = rows.fraction.to(t.device, t.dtype).pow(row_pow)
        out = out[rows.source.to(t.device)] * (factor[:, None] if t.dim() == 2 else factor)
        if rows.fresh is not None and kind != "param":
            out[rows.fresh.to(t.device)] = 0
    return out.contiguous()


def remap_layers(layers: list[nn.Linear], maps: list[UnitMap], generator: torch.Generator | None = None) -> list[nn.Linear]:
    """New linear layers whose hidden units follow ``maps`` (one per hidden layer): copies, splits or a subset."""
    new_layers = []
    for index, layer in enumerate(layers):
        rows = maps[index] if index < len(maps) else None
        cols = maps[index - 1] if index > 0 else None
        out_features = len(rows.source) if rows else layer.out_features
        in_features = len(cols.source) if cols else layer.in_features
        new = nn.Linear(in_features, out_features, bias=layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(widen_tensor(layer.weight, rows, cols))
            if layer.bias is not None:
                new.bias.copy_(widen_tensor(layer.bias, rows, None))
            if rows is not None and rows.fresh is not None and rows.fresh.any():
                # nn.Linear's own initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a seeded generator.
                bound = in_features**-0.5
                fresh = rows.fresh.to(new.weight.device)
                count = int(rows.fresh.sum())
                new.weight[fresh] = _uniform((count, in_features), bound, generator).to(new.weight)
                if layer.bias is not None:
                    new.bias[fresh] = _uniform((count,), bound, generator).to(new.bias)
        new_layers.append(new)
    return new_layers


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator) * 2 - 1) * bound


def net2wider(
    layers: list[nn.Linear], new_width: int, generator: torch.Generator, method: str = "net2net"
) -> tuple[list[nn.Linear], list[UnitMap]]:
    """Widen every hidden layer of a chain of linear layers to ``new_width``; returns new layers and the maps."""
    maps = [plan_widening(layer.out_features, new_width, generator, method) for layer in layers[:-1]]
    return remap_layers(layers, maps, generator), maps


def prune_plan(layers: list[nn.Linear], keep: int) -> list[UnitMap]:
    """Keep the ``keep`` most important units of each hidden layer: |incoming weights| x |outgoing weights|."""
    maps = []
    for layer, following in zip(layers[:-1], layers[1:]):
        importance = layer.weight.detach().norm(dim=1) * following.weight.detach().norm(dim=0)
        kept = importance.topk(keep).indices.sort().values.cpu()
        maps.append(UnitMap(kept, torch.ones(keep, dtype=torch.float64)))
    return maps


class Resizable(Protocol):
    """A model whose hidden width complexity matching can change (leantrain's ``mlp``)."""

    hidden: int

    def linear_layers(self) -> list[nn.Linear]: ...

    def set_linear_layers(self, layers: list[nn.Linear]) -> None: ...


def _resizable(model: nn.Module) -> Resizable:
    return cast(Resizable, model)  # checked once, in ComplexityMatching.on_fit_start


def resize_model(model: nn.Module, maps: list[UnitMap], generator: torch.Generator | None = None) -> dict[torch.Tensor, tuple]:
    """Apply unit maps to ``model`` in place; returns {old parameter: (new parameter, row map, col map)}."""
    old_layers = _resizable(model).linear_layers()
    new_layers = remap_layers(old_layers, maps, generator)
    _resizable(model).set_linear_layers(new_layers)
    moved = {}
    for index, (old, new) in enumerate(zip(old_layers, new_layers)):
        rows = maps[index] if index < len(maps) else None
        cols = maps[index - 1] if index > 0 else None
        moved[old.weight] = (new.weight, rows, cols)
        if old.bias is not None:
            moved[old.bias] = (new.bias, rows, None)
    return moved


def widen_model(model: nn.Module, new_width: int, generator: torch.Generator, method: str = "fresh") -> dict[torch.Tensor, tuple]:
    """Widen ``model`` in place without changing its function; returns the parameter moves for the optimizer."""
    layers = _resizable(model).linear_layers()
    maps = [plan_widening(layer.out_features, new_width, generator, method) for layer in layers[:-1]]
    return resize_model(model, maps, generator)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, moved: dict | None = None) -> torch.optim.Optimizer:
    """Same optimizer class and hyper-parameters over the model's current parameters; state carried through ``moved``."""
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    new_opt = type(optimizer)([p for p in model.parameters() if p.requires_grad], **group)
    for old, saved in optimizer.state.items():
        if moved is None or old not in moved:
            continue
        new, rows, cols = moved[old]
        new_opt.state[new] = {
            key: widen_tensor(v, rows, cols, key) if torch.is_tensor(v) and v.shape == old.shape else v
            for key, v in saved.items()
        }
    return new_opt


@register
class ComplexityMatching(Technique):
    name = "complexity"
    summary = "complexity matching (seed 000): start narrow, widen the hidden layer (Net2Net) while it helps"
    options = (
        Option("complexity", str, "off", "complexity matching (mlp): off, or match (widen the hidden layer while it helps)",
               choices=("off", "match")),
        Option("start_width", int, 8, "complexity matching: hidden width to start from"),
        Option("max_width", int, 256, "complexity matching: largest hidden width"),
    )
    # It rebuilds the model and optimizer mid-run: a sharded, staged or compiled-in-place model cannot follow.
    parallel_modes = frozenset({"none", "ddp", "mpi", "ensemble"})

    @classmethod
    def from_config(cls, config: Any) -> ComplexityMatching | None:
        if config.complexity != "match":
            return None
        return cls(config.start_width, config.max_width, seed=config.seed)

    @classmethod
    def check_config(cls, config: Any) -> None:
        if not 1 <= config.start_width <= config.max_width:
            raise ValueError(f"need 1 <= start_width <= max_width, got {config.start_width} and {config.max_width}")
        if config.complexity != "off" and not config.model.split(":")[0] == "mlp":
            raise ValueError(f"complexity matching works on the mlp model, not {config.model!r}")
        if config.complexity != "off" and config.init_from is not None:
            raise ValueError(f"complexity matching starts narrow from fresh weights, so init_from {config.init_from} "
                             "would be thrown away; use one of them")

    def __init__(self, start_width: int = 8, max_width: int = 256, factor: int = 2, patience: int = 2,
                 min_delta: float = 0.01, min_gain: float = 0.02, prune: bool = True, method: str = "fresh",
                 seed: int = 0):
        if not 1 <= start_width <= max_width or factor < 2:
            raise ValueError(f"need 1 <= start_width <= max_width and factor >= 2; got {start_width}, {max_width}, {factor}")
        self.start_width, self.max_width, self.factor, self.patience = start_width, max_width, factor, patience
        if method not in ("fresh", "net2net"):
            raise ValueError(f"widening method {method!r} is not one of: fresh, net2net")
        self.min_delta, self.min_gain, self.prune, self.method, self.seed = min_delta, min_gain, prune, method, seed
        self.width = start_width
        self.best = float("inf")
        self.best_before_widening: float | None = None
        self.epochs_without_gain = 0
        self.done = False
        self.widenings = 0

    def describe(self) -> str:
        return f"complexity{self.start_width}-{self.max_width}"

    def _resize(self, state: StepState, width: int) -> dict:
        """Widen the model's hidden layers from the current weights, carrying the optimizer state."""
        generator = torch.Generator().manual_seed(self.seed * 1_000 + self.widenings)
        moved = widen_model(state.model, width, generator, self.method)
        state.optimizer = rebuild_optimizer(state.optimizer, state.model, moved)
        self.width = width
        return moved

    def on_fit_start(self, state: StepState) -> None:
        if not callable(getattr(state.model, "linear_layers", None)):
            raise ValueError(f"complexity matching needs a model with linear_layers() (e.g. mlp); got {type(state.model).__name__}")
        if state.model.hidden != self.width and state.step == 0:
            # A fresh run built at another width (e.g. mlp's default 128): start over at the narrow width.
            _rebuild_at_width(state, self.width)

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        record["hidden_width"] = self.width  # the width this epoch trained at
        if self.done:
            return
        loss = record["val_loss"]
        if loss < self.best - self.min_delta * abs(self.best if self.best < float("inf") else loss):
            self.best, self.epochs_without_gain = loss, 0
        else:
            self.epochs_without_gain += 1
        if self.epochs_without_gain < self.patience:
            return
        helped = self.best_before_widening is None or self.best < self.best_before_widening * (1 - self.min_gain)
        if not helped or self.width * self.factor > self.max_width:
            self.done = True  # more capacity no longer buys validation loss
            if not helped and self.prune:
                # Shrink back to the width that did as well: keep the most important units (not
                # function-preserving; the next epochs fine-tune the survivors).
                keep = self.width // self.factor
                moved = resize_model(state.model, prune_plan(_resizable(state.model).linear_layers(), keep))
                state.optimizer = rebuild_optimizer(state.optimizer, state.model, moved)
                self.width = keep
            return
        self.best_before_widening = self.best
        self.widenings += 1
        self._resize(state, self.width * self.factor)
        self.epochs_without_gain = 0

    def state_dict(self) -> dict[str, Any]:
        return {"width": self.width, "best": self.best, "best_before_widening": self.best_before_widening,
                "epochs_without_gain": self.epochs_without_gain, "done": self.done, "widenings": self.widenings}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        # Runs before the weights load: give the model (and optimizer) the saved shapes first.
        for key, value in saved.items():
            setattr(self, key, value)
        if state.model.hidden != self.width:
            _rebuild_at_width(state, self.width)  # fresh layers of the saved shapes; the weights load next


def _rebuild_at_width(state: StepState, width: int) -> None:
    """Fresh hidden layers of ``width`` (nn.Linear's own initialisation) and an optimizer over them."""
    model = _resizable(state.model)
    layers = model.linear_layers()
    widths = [layers[0].in_features] + [width] * (len(layers) - 1) + [layers[-1].out_features]
    device = layers[0].weight.device
    model.set_linear_layers([nn.Linear(a, b, device=device) for a, b in zip(widths[:-1], widths[1:])])
    state.optimizer = rebuild_optimizer(state.optimizer, state.model)
