"""A third-party model or image folder without its package: one line naming the extra to install, exit 2,
nothing written (runs in every venv: the package is hidden here when it is installed)."""
import sys

import pytest

from .conftest import refused, write_images


@pytest.mark.parametrize("spec, hidden, extra", [
    ("timm:resnet18", "timm", "leantrain[vision]"),
    ("torchvision:resnet18", "torchvision", "leantrain[vision]"),
    ("hf:bert:num_hidden_layers=2", "transformers", "leantrain[hf]"),
])
def test_a_model_whose_package_is_missing_names_the_extra(tmp_path, capsys, monkeypatch, spec, hidden, extra):
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` raises ImportError, as if not installed
    err = refused(capsys, tmp_path / "out", "--model", spec, "--data", "cifar10-sim:n=40", "--epochs", "1")
    assert f"needs {hidden}, which is not installed" in err and f"pip install '{extra}'" in err


def test_an_image_folder_without_torchvision_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    folder = write_images(tmp_path / "pets", {"cat": 2, "dog": 2})
    err = refused(capsys, tmp_path / "out", "--data", f"imagefolder:path={folder}", "--epochs", "1")
    assert "needs torchvision, which is not installed" in err and "pip install 'leantrain[vision]'" in err


def test_an_unknown_source_is_not_taken_for_a_third_party_one(tmp_path, capsys):
    err = refused(capsys, tmp_path / "out", "--model", "keras:resnet18", "--data", "cifar10-sim:n=40")
    assert "cannot import module 'keras'" in err


class _BrokenBuild:
    """A finder whose torchvision fails as PyPI's wheel for torch 2.13 does beside the CPU build."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenBuild(), *sys.meta_path])
    err = refused(capsys, tmp_path / "out", "--model", "torchvision:resnet18", "--data", "cifar10-sim:n=40")
    assert "torchvision does not import beside torch" in err and "operator torchvision::nms does not exist" in err
