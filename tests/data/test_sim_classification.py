import pytest
import torch

import leantrain as lt


@pytest.mark.parametrize("name,features,classes", [("imagenet-sim", 256, 10), ("gpt3-sim", 512, 20), ("healthcare-sim", 128, 5)])
def test_seed000_sets_have_the_seed_shapes_and_an_80_20_split(name, features, classes):
    d = lt.data.load(f"{name}:n=1000")
    assert d.x_train.shape == (800, features) and d.x_val.shape == (200, features)
    assert d.num_classes == classes and int(d.y_train.max()) < classes


def test_same_seed_gives_identical_data_and_another_seed_different_data():
    a, b, c = (lt.data.load("healthcare-sim:n=500", seed=s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.x_train, c.x_train)


def test_data_sets_differ_from_each_other_at_equal_seed():
    a = lt.data.load("imagenet-sim:n=300,features=16")
    b = lt.data.load("healthcare-sim:n=300,features=16,classes=10")
    assert not torch.equal(a.x_train, b.x_train)


def test_sim_data_is_learnable_but_not_trivial_at_reduced_size():
    d = lt.data.load("healthcare-sim:n=6000")
    majority = torch.bincount(d.y_val).max().item() / len(d.y_val)
    record = lt.fit(torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 5)), d,
                    epochs=8, batch_size=128, lr=3e-3)
    acc = record["summary"]["best_val_acc"]
    assert acc > majority + 0.15, (acc, majority)
    assert acc < 0.95


def test_label_noise_caps_accuracy_of_the_true_teacher():
    clean = lt.data.load("healthcare-sim:n=2000,label_noise=0.0")
    noisy = lt.data.load("healthcare-sim:n=2000,label_noise=0.5")
    agree = (clean.y_train == noisy.y_train).float().mean().item()
    assert 0.5 < agree < 0.7  # half relabelled uniformly: 1/5 of those keep their class


def test_sklearn_digits_and_breast_cancer_are_real_and_standardised():
    digits = lt.data.load("digits")
    assert len(digits.x_train) + len(digits.x_val) == 1797 and digits.num_classes == 10
    assert digits.x_train.mean(0).abs().max() < 1e-4
    cancer = lt.data.load("breast-cancer")
    assert len(cancer.x_train) + len(cancer.x_val) == 569 and cancer.num_classes == 2


def test_unknown_data_set_and_option_are_usage_errors_that_list_what_exists():
    with pytest.raises(lt.UsageError, match="imagenet-sim"):
        lt.data.load("imagenet")
    with pytest.raises(lt.UsageError, match="options: n, features"):
        lt.data.load("imagenet-sim:size=3")
    with pytest.raises(lt.UsageError, match="not a valid int"):
        lt.data.load("imagenet-sim:n=lots")
