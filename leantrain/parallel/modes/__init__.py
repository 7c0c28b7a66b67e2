"""One file per parallel mode, each a registered ``ParallelStrategy`` (parallel/strategy.py); a new file here is
found without any list edited. Light on purpose: they are imported to validate a config."""
from leantrain.registry import import_submodules

import_submodules(__name__)
