"""The MONAI Deploy app's settings from the environment and the smoke test's work folder, without the SDK: its
modules are stubbed, so only our code is exercised (deploy/README.md runs the app itself in the SDK's environment)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _load(name: str, monkeypatch) -> types.ModuleType:
    stubs = {
        "monai.deploy": {},
        "monai.deploy.conditions": {"CountCondition": object},
        "monai.deploy.core": {"Application": object, "Fragment": object, "Operator": object, "OperatorSpec": object},
        "monai.deploy.operators": {"DICOMDataLoaderOperator": object, "DICOMSeriesSelectorOperator": object},
    }
    for module_name, attributes in stubs.items():
        module = types.ModuleType(module_name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, module_name, module)
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, {"overlays": (), "device": "cpu", "batch_size": 8}),
        ({"CFATTR_BUNDLE": "b", "CFATTR_OVERLAYS": "configs/task_mammo.json", "CFATTR_DEVICE": "cuda:0",
          "CFATTR_BATCH_SIZE": "2"}, {"bundle": "b", "overlays": ("configs/task_mammo.json",), "device": "cuda:0",
                                      "batch_size": 2}),
        ({"CFATTR_OVERLAYS": " configs/a.json, configs/b.json ,"}, {"overlays": ("configs/a.json", "configs/b.json")}),
    ],
)
def test_operator_settings_come_from_the_environment(environ, expected, monkeypatch):
    settings = _load("app", monkeypatch).operator_settings(environ)
    assert {key: settings[key] for key in expected} == expected


@pytest.mark.parametrize("batch_size", ["0", "-1", "eight", ""])
def test_a_bad_batch_size_is_refused(batch_size, monkeypatch):
    with pytest.raises(ValueError, match="CFATTR_BATCH_SIZE.*positive integer"):
        _load("app", monkeypatch).operator_settings({"CFATTR_BATCH_SIZE": batch_size})


def test_the_smoke_test_empties_only_a_folder_it_made(tmp_path, monkeypatch):
    smoke = _load("smoke_test", monkeypatch)
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not made by this script"):
        smoke.fresh_work_folder(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"
    work = smoke.fresh_work_folder(tmp_path / "work")
    (work / "output").mkdir()
    assert sorted(p.name for p in smoke.fresh_work_folder(work).iterdir()) == [smoke.MARKER]
