"""The registry gives one-line errors for bad names and options, and lets a builder's own bug through;
building a model never runs a real forward pass (FLOPs are counted on the meta device)."""
import pytest
import torch
from torch import nn

from leantrain import models
from leantrain.errors import UsageError
from leantrain.models.registry import MODELS


def test_bad_names_and_options_are_one_line_usage_errors(dataset):
    data = dataset("flat")
    with pytest.raises(UsageError, match="unknown model 'mlpp'; choose one of:"):
        models.build("mlpp", data)
    with pytest.raises(UsageError, match="has no option 'width'"):
        models.build("mlp:width=3", data)
    with pytest.raises(UsageError, match="hidden='x' is not a valid int"):
        models.build("mlp:hidden=x", data)


def test_a_classifier_on_data_without_classes_is_a_one_line_usage_error(dataset):
    with pytest.raises(UsageError, match="model 'mlp' classifies"):
        models.build("mlp", dataset("reconstruction"))


def test_a_bug_inside_a_builder_propagates_with_its_own_traceback(dataset):
    class Buggy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 4)
            self.layer(torch.zeros(1, 5))  # a shape bug: RuntimeError from torch

    MODELS.register("buggy", "a model with a bug in its constructor")(lambda data, *, size=1: Buggy())
    try:
        with pytest.raises(RuntimeError, match="cannot be multiplied") as error:
            models.build("buggy", dataset("flat"))
        assert not isinstance(error.value, UsageError)
        assert any(frame.name == "__init__" for frame in error.traceback)  # raised where the bug is
    finally:
        MODELS.unregister("buggy")


@pytest.mark.parametrize("spec,kind", [("cnn:width=4", "image"), ("resnet18:width=4", "image"),
                                        ("vgg11:width=4,batch_norm=true", "image"), ("conv-autoencoder:width=4", "reconstruction")])
def test_building_runs_no_real_forward_and_works_on_the_meta_device(spec, kind, dataset, monkeypatch):
    data = dataset(kind)
    seen = []
    real_conv = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, x, w, b: seen.append(x.device.type) or real_conv(self, x, w, b))
    reference = models.build(spec, data).flops_per_sample()
    with torch.device("meta"):
        model = models.build(spec, data)
    assert next(model.parameters()).device.type == "meta"  # built without allocating weights: shardable
    assert model.flops_per_sample() == reference
    assert seen and set(seen) == {"meta"}
