"""Common mistakes with a user's own model and data: each one line of UsageError naming the fix (issue 16),
raised before any folder is made."""
import numpy as np
import pytest
import torch
from torch import nn

import leantrain as lt


def _data(n=100, labels=None, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if labels is None else labels
    return x, y


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.mark.parametrize("case,build,match", [
    ("float labels", lambda: (nn.Linear(4, 3), _data()[0], _data()[1].float()), "integer class indices"),
    ("(N, 1) labels", lambda: (nn.Linear(4, 3), _data()[0], _data()[1][:, None]), r"squeeze\(1\)"),
    ("labels 1..C", lambda: (nn.Linear(4, 3), _data()[0], _data()[1] + 1), "labels go up to 3"),
    ("label -1", lambda: (nn.Linear(4, 3), _data()[0], _data()[1] - 1), "0..C-1"),
    ("float64 model", lambda: (nn.Linear(4, 3).double(), *_data()), "float64 parameters but the inputs are float32"),
    ("float16 model", lambda: (nn.Linear(4, 3).half(), *_data()), "MixedPrecision"),
    ("too few outputs", lambda: (nn.Linear(4, 2), *_data()), "give the model's last layer 3 outputs"),
    ("input width", lambda: (nn.Linear(5, 3), *_data()), "does not fit data"),
    ("detached output", lambda: (_Argmax(), *_data()), "does not depend on the model's parameters"),
])
def test_a_mistake_in_model_or_labels_is_one_line_before_any_folder(tmp_path, case, build, match):
    model, x, y = build()
    out = tmp_path / "ckpt"
    data = lt.data.from_tensors(x, y)
    with pytest.raises(lt.UsageError, match=match) as e:
        lt.fit(model, data, epochs=1, checkpoint_dir=out)
    _one_line(e)
    assert not out.exists()


class _Argmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return nn.functional.one_hot(self.lin(x).argmax(-1), 3).float()


def test_x_and_y_of_different_lengths_are_one_line():
    x, y = _data()
    with pytest.raises(lt.UsageError, match="same number of samples") as e:
        lt.data.from_tensors(x, y[:-1])
    _one_line(e)


def test_numpy_arrays_are_accepted_and_numpy_given_to_fit_says_how():
    x, y = _data()
    data = lt.data.from_tensors(x.numpy().astype(np.float64), y.numpy())
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    with pytest.raises(lt.UsageError, match="from_tensors") as e:
        lt.fit(nn.Linear(4, 3), x.numpy(), epochs=1)
    _one_line(e)


@pytest.mark.parametrize("techniques,match", [
    (["bf16"], "holds the string 'bf16'"),
    ([lt.MixedPrecision], "holds the class MixedPrecision; pass an instance"),
    (lt.MixedPrecision("bf16"), "must be a list"),
])
def test_techniques_given_as_names_or_classes_are_one_line(techniques, match):
    with pytest.raises(lt.UsageError, match=match) as e:
        lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_data()), epochs=1, techniques=techniques)
    _one_line(e)


def test_a_model_class_instead_of_an_instance_is_one_line():
    with pytest.raises(lt.UsageError, match=r"pass an instance, e.g. Linear\(\)"):
        lt.fit(nn.Linear, lt.data.from_tensors(*_data()), epochs=1)


def test_a_dict_output_without_output_key_names_the_keys():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.lin(x), "features": x}

    with pytest.raises(lt.UsageError, match=r"keys \['features', 'logits'\]: name the tensor the loss takes with output_key='logits'") as e:
        lt.fit(Dict(), lt.data.from_tensors(*_data()), epochs=1)
    _one_line(e)


def test_a_fit_that_fails_while_training_leaves_no_empty_folder(tmp_path):
    class Boom(lt.Callback):
        def before_step(self, state):
            raise RuntimeError("user code failed")

    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="user code failed"):
        lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_data()), epochs=1, callbacks=[Boom()], checkpoint_dir=out)
    assert not out.exists()


def test_a_scheduler_with_a_technique_that_sets_the_lr_is_refused():
    model = nn.Linear(4, 3)
    with pytest.raises(lt.UsageError, match="both set the learning rate"):
        lt.fit(model, lt.data.from_tensors(*_data()), epochs=1, techniques=[lt.WarmupCosine()],
               scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))


def test_an_optimizer_over_another_models_parameters_is_refused():
    with pytest.raises(lt.UsageError, match="not the model's"):
        lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_data()), epochs=1,
               optimizer=torch.optim.SGD(nn.Linear(4, 3).parameters(), lr=0.1))
