"""A user's own model, loss, metrics, optimizer, schedule, callbacks and data through ``lt.fit`` (issue 16)."""
import functools

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import leantrain as lt

W_TRUE, B_TRUE, NOISE = torch.tensor([[1.5], [-2.0], [0.5]]), 0.3, 0.1


def _linear_problem(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ W_TRUE + B_TRUE + NOISE * torch.randn(n, 1, generator=g)
    return x, y


def test_regression_reaches_the_known_optimum_and_reports_mse_mae_r2():
    x, y = _linear_problem()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    result = lt.fit(model, lt.data.from_tensors(x, y, task="regression"), epochs=30, batch_size=32, lr=0.03)
    last = result.epochs[-1]
    # The best possible MSE is the noise variance, 0.01; a least-squares fit is the reference.
    assert last["val_mse"] < NOISE**2 * 1.3
    assert torch.allclose(model.weight.detach().T, W_TRUE, atol=0.03) and abs(model.bias.item() - B_TRUE) < 0.03
    assert result.metric == "val_mse" and result["run"]["higher_is_better"] is False
    data = lt.data.from_tensors(x, y, task="regression")
    pred = result.predict(data.x_val)
    assert last["val_r2"] == pytest.approx(float(torchmetrics.functional.r2_score(pred, data.y_val)), abs=1e-5)
    assert last["val_mae"] == pytest.approx(float((pred - data.y_val).abs().mean()), rel=1e-4)
    assert last["val_mse"] == pytest.approx(float((pred - data.y_val).square().mean()), rel=1e-4)


def test_r2_of_several_target_columns_matches_torchmetrics_variance_weighted():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g)
    y = torch.cat([x[:, :1] * 10 + 50, x[:, 1:2] * 0.1 + torch.randn(400, 1, generator=g)], dim=1)
    torch.manual_seed(0)
    result = lt.fit(nn.Linear(3, 2), lt.data.from_tensors(x, y, task="regression"), epochs=2, lr=0.05)
    data = lt.data.from_tensors(x, y, task="regression")
    reference = torchmetrics.functional.r2_score(result.predict(data.x_val), data.y_val, multioutput="variance_weighted")
    assert result.epochs[-1]["val_r2"] == pytest.approx(float(reference), abs=1e-5)


def test_a_loss_by_name_or_callable_and_metrics_callable_or_torchmetrics():
    x, y = _linear_problem(n=300)
    data = lt.data.from_tensors(x, y, task="regression")
    torch.manual_seed(0)
    huber = lt.fit(nn.Linear(3, 1), data, epochs=2, loss_fn="huber")
    assert huber["run"]["loss"] == "huber"
    torch.manual_seed(0)
    result = lt.fit(nn.Linear(3, 1), data, epochs=2, loss_fn=nn.L1Loss(),
                    metrics={"mae_tm": torchmetrics.MeanAbsoluteError(), "max_err": lambda o, t: (o - t).abs().max()})
    last = result.epochs[-1]
    pred = result.predict(data.x_val)
    l1 = float((pred - data.y_val).abs().mean())
    assert last["val_loss"] == pytest.approx(l1, rel=1e-4)  # the callable's batch means, weighted by samples
    assert last["val_mae_tm"] == pytest.approx(l1, rel=1e-4) and last["val_mae"] == pytest.approx(l1, rel=1e-4)
    assert last["val_max_err"] <= float((pred - data.y_val).abs().max()) + 1e-5  # a mean of per-batch maxima
    assert huber.epochs[-1]["train_loss"] != result.epochs[-1]["train_loss"]


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)

    def forward(self, x):
        return {"logits": self.body(x), "hidden": x}


def _classes(n=400):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_a_model_returning_a_dict_trains_with_output_key_and_predicts_the_chosen_tensor():
    torch.manual_seed(0)
    result = lt.fit(DictModel(), lt.data.from_tensors(*_classes()), epochs=15, lr=0.02, output_key="logits")
    assert result.epochs[-1]["val_acc"] > 0.7
    assert result.predict(torch.randn(5, 4)).shape == (5, 3)


def test_an_optimizer_instance_keeps_its_groups_lr_ratio_under_a_technique_that_sets_the_lr():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.01}], momentum=0.9)
    result = lt.fit(model, lt.data.from_tensors(*_classes()), epochs=2, optimizer=opt,
                    techniques=[lt.WarmupCosine(warmup=0.0, min_lr_ratio=0.5)])
    assert result["run"]["config"]["lr"] == 0.1 and result["run"]["optimizer"] == "SGD"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=0.02)  # cosine ended near its floor, 0.5 * 0.1
    assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] / 10)


def test_an_optimizer_factory_and_a_scheduler_drive_the_lr():
    torch.manual_seed(0)
    result = lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_classes()), epochs=3,
                    optimizer=functools.partial(torch.optim.SGD, lr=0.2),
                    scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    assert [e["lr"] for e in result.epochs] == pytest.approx([0.2, 0.1, 0.05])
    torch.manual_seed(0)
    result = lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_classes()), epochs=1, batch_size=80,
                    optimizer=functools.partial(torch.optim.SGD, lr=0.2), scheduler_interval="step",
                    scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (step + 1)))
    assert result.epochs[0]["lr"] == pytest.approx(0.2 / 5)  # 4 steps of 80 samples, stepped after each


def test_early_stopping_keep_best_and_a_users_callback(tmp_path):
    seen = []

    class Collect(lt.Callback):
        def on_epoch_end(self, state, record):
            seen.append((record["epoch"], record["val_loss"]))

    torch.manual_seed(0)
    stop = lt.EarlyStopping("val_loss", patience=2, min_delta=10.0)  # nothing improves by 10: stop after 1 + 2
    result = lt.fit(nn.Linear(4, 3), lt.data.from_tensors(*_classes()), epochs=20, lr=0.05,
                    callbacks=[stop, lt.KeepBest(), Collect()], checkpoint_dir=tmp_path)
    assert len(result.epochs) == 3 and result.epochs[-1]["stopped_early"] and [e for e, _ in seen] == [1, 2, 3]
    assert result.best_checkpoint is not None and result.best_checkpoint.parent == tmp_path
    saved = torch.load(result.best_checkpoint, weights_only=True)
    assert saved["epoch"] == max(result.epochs, key=lambda e: e["val_acc"])["epoch"]  # max() keeps the first best
    assert saved["val_acc"] == max(e["val_acc"] for e in result.epochs)
    assert "FitResult(model=Linear" in repr(result) and "best_checkpoint=" in repr(result)


def test_the_same_recipe_via_a_dataloader_a_dataset_and_tensors_gives_the_same_losses():
    x, y = _classes(n=300)
    runs = []
    for data in (lt.data.from_tensors(x, y),
                 lt.data.from_loader(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)),
                 lt.data.from_loader(TensorDataset(x, y))):
        torch.manual_seed(0)
        runs.append([(e["train_loss"], e["val_loss"]) for e in
                     lt.fit(nn.Linear(4, 3), data, epochs=3, batch_size=16, lr=0.05).epochs])
    assert runs[0] == runs[1] == runs[2]


def test_the_result_is_the_record_as_a_dict_with_the_model_beside_it():
    import json

    model = nn.Linear(4, 3)
    result = lt.fit(model, lt.data.from_tensors(*_classes()), epochs=1)
    assert isinstance(result, dict) and result.model is model and result.best_checkpoint is None
    assert json.loads(json.dumps(result))["summary"] == result.record["summary"]
    assert result.epochs is result["epochs"] and result.metric == "val_acc"


class Crash(lt.Callback):
    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def before_step(self, state):
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_a_resumed_fit_continues_the_users_scheduler_where_it_stopped(tmp_path):
    def run(folder, crash=None, resume=False):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        return lt.fit(model, lt.data.from_tensors(*_classes()), epochs=4, checkpoint_dir=folder, resume=resume,
                      optimizer=functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9),
                      scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch),
                      callbacks=[crash] if crash else [])

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part", Crash(2))
    resumed = run(tmp_path / "part", resume=True)
    assert [e["lr"] for e in resumed.epochs] == [e["lr"] for e in whole.epochs] == pytest.approx([0.2, 0.1, 0.05, 0.025])
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in whole.epochs]
