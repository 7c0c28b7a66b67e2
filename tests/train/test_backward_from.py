"""The loop's backward straight to the autograd engine: the same gradients and hooks as ``loss.backward(gradient)``,
and the public path wherever something may intercept it (a tensor subclass, a torch-function mode, a torch.func
transform, debug logging) or this torch ends its backward otherwise."""
from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from leantrain import _torch_private
from leantrain._torch_private import backward_from


def _model_and_loss(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    return model, nn.functional.cross_entropy(model(x), y, reduction="sum")


def test_gradients_equal_the_public_backward_and_skip_its_python():
    reference, loss = _model_and_loss()
    loss.backward(torch.full((), 1 / 32))
    model, loss = _model_and_loss()
    with mock.patch.object(torch.autograd, "backward", wraps=torch.autograd.backward) as public:
        backward_from(loss, torch.full((), 1 / 32))
    assert public.call_count == 0  # the engine ran it, not torch.autograd.backward's Python
    for got, want in zip(model.parameters(), reference.parameters()):
        assert torch.equal(got.grad, want.grad)
    with pytest.raises(RuntimeError, match="graph|freed"):  # the graph was freed, as retain_graph=False does
        backward_from(loss, torch.full((), 1 / 32))


def test_hooks_on_modules_and_tensors_run():
    model, _ = _model_and_loss()
    seen = []
    model[0].register_full_backward_hook(lambda module, grad_in, grad_out: seen.append("module"))
    model[0].weight.register_hook(lambda grad: seen.append("tensor"))
    loss = model(torch.randn(4, 8, requires_grad=True)).sum()
    backward_from(loss, torch.ones(()))
    assert sorted(seen) == ["module", "tensor"]


class _Recorded(torch.Tensor):
    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_subclass_goes_through_its_torch_function():
    _Recorded.calls.clear()
    x = torch.randn(3, requires_grad=True)
    loss = (x * 2).sum().as_subclass(_Recorded)
    backward_from(loss, torch.ones(()))
    assert "backward" in _Recorded.calls
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_an_active_torch_function_mode_sees_the_backward():
    seen = []

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, requires_grad=True)
    loss = (x * 2).sum()
    with Mode():
        backward_from(loss, torch.ones(()))
    assert "backward" in seen


def test_autograd_debug_logging_takes_the_public_path():
    _, loss = _model_and_loss()
    log = logging.getLogger("torch.autograd.graph")
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        with mock.patch.object(torch.autograd, "backward", wraps=torch.autograd.backward) as public:
            backward_from(loss, torch.ones(()))
    finally:
        log.setLevel(level)
    assert public.call_count == 1


def test_a_loss_scaled_for_fp16_gives_the_public_gradients():
    """As the loop runs fp16: the GradScaler's scaled loss, the gradient made from the unscaled one."""
    grads = []
    for backward in (lambda loss, gradient: loss.backward(gradient), backward_from):
        model, loss = _model_and_loss()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        backward(scaler.scale(loss), torch.full((), 1 / 32, dtype=loss.dtype))
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(g.abs().sum() > 0 for g in grads[1])


def test_inside_a_torch_func_transform_the_public_refusal_stands():
    x = torch.randn(3, requires_grad=True)

    def backward_inside(weight: torch.Tensor) -> torch.Tensor:
        backward_from((x * weight).sum(), torch.ones(()))
        return weight.sum()

    with pytest.raises(RuntimeError, match="functorch transform"):
        torch.func.grad(backward_inside)(torch.ones(3))


def test_a_torch_whose_backward_ends_otherwise_takes_the_public_path(monkeypatch):
    """Older torch stashes no context, or clears it another way: the engine call is made only where it is known."""
    class OlderC:
        _stash_obj_in_tls = staticmethod(torch._C._stash_obj_in_tls)  # no _remove_obj_from_tls

    assert _torch_private.engine_call_known()
    assert not _torch_private.engine_call_known(OlderC)
    monkeypatch.setattr(_torch_private, "_ENGINE_CALL_KNOWN", False)
    _, loss = _model_and_loss()
    with mock.patch.object(torch.autograd, "backward", wraps=torch.autograd.backward) as public:
        backward_from(loss, torch.ones(()))
    assert public.call_count == 1
