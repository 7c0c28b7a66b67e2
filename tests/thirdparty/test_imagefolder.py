"""``--data imagefolder:path=DIR`` (issue 25, item 4): PNG folders generated here, read in memory or streamed,
split by the run's seed. Needs torchvision (leantrain[vision]): run in the vision venv."""
import pytest
import torch

import leantrain as lt

from .conftest import record, refused, run_toml, train, write_images

pytestmark = pytest.mark.vision
pytest.importorskip("torchvision", reason="needs leantrain[vision] (torchvision; the Makefile's .venv-vision)")

COUNTS = {"cat": 14, "dog": 13, "emu": 13}  # 32 training and 8 validation images
MODEL = ("--model", "cnn:width=4,hidden=16", "--epochs", "1", "--batch-size", "16", "--memory-check", "false")


@pytest.fixture
def folder(tmp_path):
    return write_images(tmp_path / "pets", COUNTS)


def _spec(folder, **options):
    return ",".join([f"imagefolder:path={folder}", *(f"{k}={v}" for k, v in options.items())])


def test_classes_come_from_the_folder_names_and_the_split_from_the_seed(folder):
    data = lt.data.load(_spec(folder, size=8, val_fraction=0.2), seed=0)
    assert data.info["classes"] == ["cat", "dog", "emu"] and data.num_classes == 3
    assert data.x_train.shape == (32, 3, 8, 8) and data.x_val.shape == (8, 3, 8, 8)  # every image resized
    assert torch.cat([data.y_train, data.y_val]).bincount().tolist() == [14, 13, 13]
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # standardised by the training split
    same, other = lt.data.load(_spec(folder, size=8), seed=0), lt.data.load(_spec(folder, size=8), seed=1)
    assert torch.equal(same.x_val, data.x_val) and not torch.equal(other.y_val, data.y_val)
    imagenet = lt.data.load(_spec(folder, size=8, normalize="imagenet"))
    assert imagenet.info["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_streamed_reads_the_same_split_from_disk(folder):
    memory = lt.data.load(_spec(folder, size=8), seed=2)
    streamed = lt.data.load(_spec(folder, size=8, stream="true"), seed=2)
    train_stream, val_stream = streamed.streams
    assert len(train_stream) == 32 and len(val_stream) == 8 and streamed.num_classes == 3
    assert torch.equal(streamed.y_val, memory.y_val)  # the same images held out, in the same order
    assert torch.allclose(streamed.x_val, memory.x_val, atol=1e-5)  # all 32 training images give the statistics


@pytest.mark.parametrize("stream", ["false", "true"])
def test_an_image_folder_trains_from_the_command_line(tmp_path, capsys, folder, stream):
    code, err = train(capsys, tmp_path / "out", "--data", _spec(folder, size=16, stream=stream), *MODEL)
    assert code == 0, err
    run = record(tmp_path / "out")["run"]
    assert (run["train_samples"], run["val_samples"]) == (32, 8)
    assert record(tmp_path / "out")["epochs"][0]["val_acc"] is not None


def test_torchvision_resnet18_trains_on_an_image_folder(tmp_path, capsys, folder):
    code, err = train(capsys, tmp_path / "out", "--data", _spec(folder, size=16), *MODEL[2:],
                      "--model", "torchvision:resnet18")
    assert code == 0, err
    assert record(tmp_path / "out")["run"]["params"] == 11_178_051  # resnet18 with 3 classes


def test_an_experiment_file_names_a_timm_model_on_an_image_folder(tmp_path, folder):
    pytest.importorskip("timm", reason="needs leantrain[vision] (timm)")
    (only,) = run_toml(tmp_path, "timm:test_resnet", _spec(folder, size=16))
    assert only["run"]["model"] == "timm:test_resnet" and only["epochs"][0]["val_acc"] is not None


def test_unreadable_or_missing_image_folders_are_one_line(tmp_path, capsys, folder):
    (tmp_path / "empty").mkdir()
    write_images(tmp_path / "one", {"only": 3})
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "notes.txt").write_text("no image")
    (folder / "cat" / "7.png").write_bytes(b"not a png")
    for spec, expected in [
        ("imagefolder", "needs path=DIR"),
        (_spec(tmp_path / "missing"), "is not a folder"),
        (_spec(tmp_path / "empty"), "holds no images in class subfolders"),
        (_spec(tmp_path / "texts"), "holds no images in class subfolders"),
        (_spec(tmp_path / "one"), "classification needs at least 2"),
        (_spec(folder), "7.png is not a readable image"),
        (_spec(folder, size=0), "size=0 must be a positive number"),
        (_spec(folder, normalize="mine"), "normalize='mine' is unknown; choose one of: train, imagenet"),
    ]:
        assert expected in refused(capsys, tmp_path / "out", "--data", spec, *MODEL)
