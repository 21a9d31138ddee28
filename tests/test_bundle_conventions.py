"""Model-zoo conventions the three bundles share: the folder layout, metadata that verifies offline against the
schema copy in ``../shared/monai``, and the config keys ``python -m monai.bundle run`` and MONAI Deploy rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, verify_metadata
from test_bad_input import chained

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
SCHEMA = BUNDLES.parents[1] / "shared" / "monai" / "meta_schema_20240725.json"
NAMES = ["classifier", "inpainter", "attributor"]
CONFIGS = ("logging.conf", "metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
LAYOUT = ["LICENSE", "docs/README.md", "docs/data_license.txt", *(f"configs/{name}" for name in CONFIGS)]
SHARED_KEYS = ("bundle_root", "ckpt_dir", "output_dir", "datalist", "device", "network_def", "network", "initialize",
               "run", "finalize")  # fmt: skip
# the attributor reads the two other bundles: where they are, their overlays, π and the classifier's threshold
BUNDLE_KEYS = {
    "classifier": (),
    "inpainter": (),
    "attributor": ("classifier_bundle", "classifier_overlays", "inpainter_bundle", "inpainter_overlays",
                   "marginalizer", "threshold"),  # fmt: skip
}


@pytest.mark.parametrize("bundle", NAMES)
@pytest.mark.parametrize("path", LAYOUT)
def test_model_zoo_layout(bundle, path):
    assert (BUNDLES / bundle / path).is_file(), f"bundles/{bundle}/{path} is missing"


@pytest.mark.parametrize("bundle", NAMES)
def test_metadata_verifies_offline(bundle, tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"schema copy {SCHEMA} not found")
    meta_file = BUNDLES / bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))
    broken = json.loads(meta_file.read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", NAMES)
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_config_names_the_shared_keys(bundle, config):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / config))
    missing = [key for key in SHARED_KEYS + BUNDLE_KEYS[bundle] if key not in parser]
    assert not missing, f"bundles/{bundle}/configs/{config} lacks {missing}"


@pytest.mark.parametrize("bundle", NAMES)
def test_training_writes_the_weights_inference_loads(bundle):
    """train.json and inference.json name the same ``ckpt_dir`` under every task overlay (the pipeline skips a
    training, and the other bundles load the weights, by inference.json's)."""
    configs = BUNDLES / bundle / "configs"
    for overlay in [None, *sorted(configs.glob("task_*.json"))]:
        folders = []
        for base in ("train.json", "inference.json"):
            parser = ConfigParser()
            parser.read_config([str(configs / base), *([str(overlay)] if overlay else [])])
            parser["bundle_root"] = "b"
            folders.append(parser.get_parsed_content("ckpt_dir"))
        assert folders[0] == folders[1], (bundle, overlay and overlay.name, folders)


@pytest.mark.parametrize(
    "bundle, schedule",
    [
        ("classifier", {"num_epochs": 1}),
        ("attributor", {"num_epochs": 1}),
        ("inpainter", {"phase1_epochs": 1, "phase2_epochs": 0}),
    ],
)
def test_training_that_ends_before_its_first_validation_is_refused_before_any_work(bundle, schedule, tmp_path):
    """model.pt is saved at validations: a run with fewer epochs than val_interval would end without one."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "val_interval": 2, **schedule})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize")
    chain = [str(error) for error in chained(info.value)]
    assert any("no models/model.pt would be written; pass --val_interval 1" in m for m in chain), chain
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"
