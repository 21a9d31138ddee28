"""Smoke test of scripts/oracle_fills.py: the study with the oracle fills on a tiny chest phantom set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cfattr_monai.bundle import read_bundle_config
from cfattr_monai.data.phantoms import write_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def oracle_fills():
    spec = importlib.util.spec_from_file_location("oracle_fills", ROOT / "scripts" / "oracle_fills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_weights(bundle: str, path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(read_bundle_config(ROOT / "bundles" / bundle).get_parsed_content("network_def").state_dict(), path)
    return path


def test_tiny_study_reports_every_fill(oracle_fills, tmp_path, capsys):
    datalist = write_phantom_dataset(tmp_path / "chest", kind="chest", n=12, size=64)
    out = tmp_path / "oracle.json"
    results = oracle_fills.main([
        "--datalist", str(datalist), "--runs", "1", "--out", str(out),
        "--classifier-checkpoint", str(_random_weights("classifier", tmp_path / "c.pt")),
        "--inpainter-checkpoint", str(_random_weights("inpainter", tmp_path / "i.pt")),
    ])
    fills = {"inpaint", "blur", "noise", "mean", "oracle_mean", "oracle_sample", "anatomy"}
    assert json.loads(out.read_text()) == json.loads(json.dumps(results)) and "roc" not in results
    for key in ("mean_abs_dp_healthy", "mean_dp_healthy", "psnr", "twin_psnr"):
        assert set(results[key]) == fills, key
    # the oracle knows the anatomy: closer to the truth in the hole than blur, noise or the mean
    assert results["psnr"]["oracle_mean"] > max(results["psnr"][name] for name in ("blur", "noise", "mean"))
    assert "oracle_sample" in capsys.readouterr().out
