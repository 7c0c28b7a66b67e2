"""Decode cache off: seed 004's "no KV caching" arm. Validation's greedy decode (and evaluate/predict) then
re-runs the whole model on the prefix each step instead of carrying the LSTM state or the transformer's
key/value cache. The tokens are the same; only the time differs, which is what the seed's table compares."""
from __future__ import annotations

from typing import Any

from leantrain.errors import UsageError
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register


@register
class DecodeCacheOff(Technique):
    name = "decode-cache"
    summary = "decode_cache off: greedy decoding recomputes the prefix each step (the seed's uncached baseline)"
    options = (
        Option("decode_cache", str, "on", "seq2seq greedy decoding: on (cached state / key-value cache) or off "
               "(recompute the prefix every step; same tokens)", choices=("on", "off")),
    )
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "pipeline", "hybrid", "ensemble"})

    @classmethod
    def from_config(cls, config: Any) -> DecodeCacheOff | None:
        return cls() if config.decode_cache == "off" else None

    def describe(self) -> str:
        return "decode-cache-off"

    def on_fit_start(self, state: StepState) -> None:
        if not hasattr(state.model, "decode_cache"):
            raise UsageError(f"decode_cache off: model {type(state.model).__name__} has no cached decoder to switch off; "
                             "use a seq2seq model")
        setattr(state.model, "decode_cache", False)  # noqa: B010  # an attribute nn.Module's typing does not know

    def on_fit_end(self, state: StepState) -> None:
        setattr(state.model, "decode_cache", True)  # noqa: B010  # a saved model decodes cached by default; evaluate/predict choose
