"""What model builders share: reading the facts they need from a Dataset, and counting layer FLOPs."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError


def image_shape(data: Dataset, model: str) -> tuple[int, int, int]:
    """(channels, height, width) of an image data set; a clear error for anything else."""
    shape = data.input_shape
    if len(shape) != 3 or not data.x_train.is_floating_point():
        raise UsageError(
            f"model {model!r} needs float images (N, C, H, W); data set {data.name!r} has inputs of shape "
            f"(N, {', '.join(map(str, shape))}) and dtype {data.x_train.dtype}"
        )
    return (shape[0], shape[1], shape[2])


def token_length(data: Dataset, model: str) -> int:
    """Sequence length of a data set whose inputs are token ids (N, L)."""
    if len(data.input_shape) != 1 or data.x_train.is_floating_point():
        raise UsageError(
            f"model {model!r} needs token ids (N, L) of integer dtype; data set {data.name!r} has inputs of shape "
            f"(N, {', '.join(map(str, data.input_shape))}) and dtype {data.x_train.dtype}"
        )
    return data.input_shape[0]


def classes_of(data: Dataset, override: int, model: str) -> int:
    """Classes from the data set, unless the user overrides them (0 means: from the data)."""
    if override > 0:
        return override
    if not data.num_classes:
        raise UsageError(
            f"model {model!r} classifies, but data set {data.name!r} (task {data.task!r}) has no classes; "
            "pass num_classes=N or choose a classification data set"
        )
    return data.num_classes


def info_int(data: Dataset, key: str, model: str, override: int = 0) -> int:
    """An integer fact from ``data.info`` (vocabulary size, pad index, ...), unless overridden (> 0)."""
    if override > 0:
        return override
    if key not in data.info:
        raise UsageError(
            f"model {model!r} needs {key!r} from the data set, and {data.name!r} does not give it "
            f"(it gives: {', '.join(sorted(data.info)) or 'nothing'}); pass {key}=N"
        )
    return int(data.info[key])


def require_task(data: Dataset, task: str, model: str) -> None:
    if data.task != task:
        raise UsageError(f"model {model!r} trains on {task!r} data; data set {data.name!r} is a {data.task!r} task")


def layer_flops(model: nn.Module, sample_shape: tuple[int, ...]) -> float:
    """Forward FLOPs of one sample in the conv and linear layers (2 per multiply-add), by shape hooks.

    Normalisation, activations, pooling and residual additions are left out: they are a few percent
    of a conv net's work, and FlopCounterMode (which utilisation is checked against) leaves them out too.
    The forward runs on the meta device (shapes only, no arithmetic, no memory) with meta stand-ins for
    the weights, so it is free for a large model and works on one built on the meta device to be sharded.
    It runs in eval mode, so batch norm accepts a batch of one.
    """
    return sum(flops_by_layer(model, sample_shape).values())


def flops_by_layer(model: nn.Module, sample_shape: tuple[int, ...]) -> dict[nn.Module, float]:
    """``layer_flops`` per conv/linear layer (the layers a forward pass runs; a layer run twice counts twice)."""
    counts: dict[nn.Module, float] = {}

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        flops = 0.0
        if isinstance(module, nn.Linear):
            flops = 2.0 * module.in_features * output.numel()
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops = 2.0 * output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.ConvTranspose2d):
            # Every input element scatters into kh*kw*out_channels outputs.
            kh, kw = module.kernel_size
            flops = 2.0 * inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        counts[module] = counts.get(module, 0.0) + flops

    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    on_meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            torch.func.functional_call(model, on_meta, (torch.zeros(1, *sample_shape, device="meta"),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts
