"""The run's Precision object: fp32 is a no-op, MixedPrecision configures it, master weights stay fp32."""
import pytest
import torch
from torch import nn

import leantrain
from leantrain.data import from_tensors
from leantrain.errors import UsageError
from leantrain.techniques import MixedPrecision, Technique
from leantrain.techniques.amp import Precision

CPU = torch.device("cpu")


def test_fp32_precision_leaves_an_outer_autocast_on_and_does_not_scale():
    precision = Precision(CPU)
    loss = torch.tensor(3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16), precision.autocast():
        assert torch.is_autocast_enabled("cpu")  # a disabled autocast would have switched the caller's off
    assert precision.scale(loss) is loss and precision.loss_scale() is None
    assert not precision.scaler_checks_grads and precision.scale_tensor() is None


@pytest.mark.parametrize("name,dtype,scaling", [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)])
def test_mixed_precision_configures_the_runs_precision(name, dtype, scaling):
    class Look(Technique):
        name = "look"
        runs_after = ("precision",)

        def on_fit_start(self, state):
            self.seen = (state.precision.compute_dtype, state.precision.scaler_checks_grads)
            with state.precision.autocast():
                self.out_dtype = nn.Linear(4, 4)(torch.randn(2, 4)).dtype

    look = Look()
    x, y = torch.randn(64, 4), torch.arange(64) % 2
    leantrain.fit(nn.Linear(4, 2), from_tensors(x, y), epochs=1, batch_size=32, device="cpu",
                  techniques=[MixedPrecision(name), look])
    assert look.seen == (dtype, scaling) and look.out_dtype == dtype


def test_mixed_precision_refuses_a_model_cast_down_naming_the_parameter():
    model = nn.Sequential(nn.Linear(4, 2)).to(torch.bfloat16)
    with pytest.raises(UsageError, match=r"parameter '0.weight' is torch.bfloat16"):
        Precision(CPU).check_master_weights(model)
    Precision(CPU).check_master_weights(nn.Linear(4, 2))  # fp32: accepted
