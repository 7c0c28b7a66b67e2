"""Running one training loop on several processes: launcher detection, the process group, DDP, local launch."""
from leantrain.parallel.dist import Dist, process_group
from leantrain.parallel.env import World, detect

__all__ = ["Dist", "World", "detect", "process_group"]
