"""What eic says when a module it needs is not installed: which requirement, and the pip line for all that is
missing of its kind (docs/deploy.md: a machine that only labels has no PyTorch)."""

from __future__ import annotations

import pytest
import typer

from europeana_imgcls.cli import app
from europeana_imgcls.cli.app import _missing
from europeana_imgcls.core import dependencies
from europeana_imgcls.core.dependencies import Requirement, declared, missing_module

IMPORTABLE = Requirement.importable


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if the distributions providing ``modules`` (and only they) were not installed."""
    monkeypatch.setattr(Requirement, "importable", lambda self: self.module not in modules and IMPORTABLE(self))


def test_a_missing_dependency_names_the_pip_line_for_every_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "torch", "sklearn", "pytorch_grad_cam")
    said = missing_module("torch.distributed", "train")
    assert said == (
        "eic train needs torch, which is not installed here: pip install 'torch<3,>=2.2' 'scikit-learn>=1.3' "
        "'grad-cam>=1.5' (the 3 of eic's requirements missing here)"
    )
    _without(monkeypatch, "PIL")
    said = missing_module("PIL.Image", "stats")
    assert said == "eic stats needs PIL, which is not installed here: pip install 'Pillow>=10.1'"


def test_a_missing_extra_names_the_extra_and_its_missing_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "onnxruntime", "onnx", "timm")
    assert missing_module("onnxruntime", "predict") == (
        "eic predict needs onnxruntime, which is not installed here (eic's extra [onnx]): "
        "pip install 'onnxruntime>=1.18' 'onnx>=1.16'"
    )


def test_a_module_eic_does_not_declare_says_to_install_it_or_eic_whole() -> None:
    assert missing_module("cv2", "predict") == (
        "eic predict needs cv2, which is not installed here: install it, or install eic with its dependencies "
        "(pip install europeana-imgcls)"
    )


def test_eic_run_from_a_source_tree_still_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def nowhere(name: str) -> list[str]:
        raise dependencies.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dependencies.metadata, "requires", nowhere)
    declared.cache_clear()
    try:
        assert declared() == ()
        assert missing_module("torch", "train").startswith("eic train needs torch, which is not installed here:")
    finally:
        monkeypatch.undo()
        declared.cache_clear()


def test_the_command_line_says_it_in_one_line_but_a_module_of_eics_own_is_a_fault(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(app, "missing_package", lambda name: name.split(".")[0] == "torch")
        with pytest.raises(typer.Exit) as ended:
            _missing(ModuleNotFoundError("No module named 'torch'", name="torch.distributed"), "evaluate")
    assert ended.value.exit_code == 1
    assert capsys.readouterr().err.startswith("eic: error: eic evaluate needs torch, which is not installed here:")
    for name in ("europeana_imgcls.gone", "numpy.gone", "sklearn.metrcs"):  # eic's own; a part of what is there
        fault = ModuleNotFoundError(f"No module named {name!r}", name=name)
        with pytest.raises(ModuleNotFoundError) as raised:
            _missing(fault, "evaluate")
        assert raised.value is fault
    assert not capsys.readouterr().err


def test_a_requirement_for_some_platforms_only_is_named_by_no_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["torch<3,>=2.2", 'colorama>=0.4; platform_system == "Windows"', 'onnx>=1.16; extra == "onnx"']
    monkeypatch.setattr(dependencies.metadata, "requires", lambda name: lines)
    declared.cache_clear()
    try:
        assert declared() == (Requirement("torch", "<3,>=2.2", ""), Requirement("onnx", ">=1.16", "onnx"))
    finally:
        monkeypatch.undo()
        declared.cache_clear()
