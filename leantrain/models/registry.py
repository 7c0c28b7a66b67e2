"""The model registry. A builder takes the Dataset (for input shape, classes, vocabulary) and options.

Conventions every registered model keeps, so techniques and metrics work on all of them:
- ``flops_per_sample()`` returns the forward-pass FLOPs for one sample (one token for sequence models);
  training costs about three times that (forward + backward).
- repeated blocks live in ``self.blocks``, an ``nn.Sequential`` that ``forward`` calls as one (``self.blocks(x)``):
  its order known, activation checkpointing recomputes them in √L segments of consecutive blocks (blocks in an
  ``nn.ModuleList`` the forward iterates are checkpointed one by one, which saves nothing on blocks that save
  only their input); a model without repeated blocks has an empty ``nn.ModuleList``.
- a model that can be split into pipeline stages says how: ``pipeline_parts()`` returns (the module run
  before the blocks, ``self.blocks``, the module run after them), so that ``forward(x)`` equals
  ``after(blocks[-1](...blocks[0](before(x))))``; ``--parallel pipeline`` refuses a model without it.
"""
from leantrain.registry import Registry

MODELS: Registry = Registry("model")
