"""The data-set registry. Builders take keyword-only options and a seed, and return a Dataset."""
from leantrain.registry import Registry

DATASETS: Registry = Registry("data set")
