"""The classifier bundle: task overlays and end-to-end train → evaluate → inference runs.

The end-to-end runs follow model-zoo's ``ci/unit_tests``: the configs are copied into a temporary bundle folder,
``bundle_root`` and the data set are overridden, and ``initialize`` makes tiny 64² phantoms there, so nothing is
written into the repository.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import DenseNet121

from cfattr_monai.bundle import fingerprint, load_network
from cfattr_monai.networks.encoders import ClassifierEncoder
from cfattr_monai.networks.mobilenet import MobileNetV1

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "classifier"
TASKS = ["task_mammo.json", "task_cxr.json", "task_phantom_chest.json", "task_phantom_chest_densenet121.json"]
TINY = {"phantoms": {"kind": "mammo", "n": 20, "size": 64, "seed": 0}, "image_size": [64, 64], "batch_size": 4}


def _configs(*names: str, root: Path = BUNDLE) -> list[str]:
    return [str(root / "configs" / name) for name in names]


def run_workflow(root: Path, configs: list[str], **override) -> ConfigWorkflow:
    """Run ``initialize``, ``run`` and ``finalize`` of the merged configs with ``bundle_root`` = ``root``."""
    workflow = ConfigWorkflow(
        config_file=_configs(*configs, root=root),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        bundle_root=str(root),
        dataset_dir=str(root / "phantoms"),
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.mark.parametrize("task", TASKS)
def test_task_overlays_replace_known_top_level_keys(task):
    """Overlays must merge with train.json, evaluate.json and inference.json alike: no nested ids, no typos."""
    overlay = json.loads((BUNDLE / "configs" / task).read_text())
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert not [key for key in overlay if "#" in key or "::" in key]
    assert sorted(set(overlay) - set(train)) == []


@pytest.mark.parametrize(
    "overlays,config,expected_class,input_size,width",
    [
        ([], "train.json", MobileNetV1, (128, 128), 0.5),
        ([], "inference.json", MobileNetV1, (128, 128), 0.5),
        (["task_mammo.json"], "train.json", MobileNetV1, (448, 576), 1.0),
        (["task_mammo.json"], "inference.json", MobileNetV1, (448, 576), 1.0),
        (["task_cxr.json"], "train.json", DenseNet121, (256, 256), None),
        (["task_cxr.json"], "inference.json", DenseNet121, (256, 256), None),
        (["task_phantom_chest.json"], "train.json", MobileNetV1, (128, 128), 0.5),
        (["task_phantom_chest.json"], "inference.json", MobileNetV1, (128, 128), 0.5),
        (["task_phantom_chest_densenet121.json"], "train.json", DenseNet121, (256, 256), None),
        (["task_phantom_chest_densenet121.json"], "inference.json", DenseNet121, (256, 256), None),
    ],
)
def test_configured_network(overlays, config, expected_class, input_size, width):
    parser = ConfigParser()
    parser.read_config(_configs(config, *overlays))
    assert tuple(parser["image_size"]) == input_size
    net = parser.get_parsed_content("network_def")
    assert type(net) is expected_class
    assert ClassifierEncoder(net).strides == (4, 8, 16, 32)
    if expected_class is MobileNetV1:
        assert net.width_mult == width


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle copy trained for two epochs on 20 phantoms of 64² made by ``initialize``."""
    root = tmp_path_factory.mktemp("classifier")
    shutil.copytree(BUNDLE / "configs", root / "configs")
    workflow = run_workflow(root, ["train.json"], num_epochs=2, **TINY)
    return root, workflow


@pytest.mark.slow
def test_train_writes_best_model_and_resumable_state(trained):
    root, workflow = trained
    assert (root / "phantoms" / "datalist.json").is_file()
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "checkpoint_epoch=2.pt").is_file()
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 2
    net = load_network(root, checkpoint="models/model.pt")
    assert fingerprint(net) == fingerprint(_state_dict_module(root / "models" / "model.pt", net))


def _state_dict_module(path: Path, like: torch.nn.Module) -> torch.nn.Module:
    module = MobileNetV1(width_mult=like.width_mult)
    module.load_state_dict(torch.load(path, weights_only=True))
    return module


@pytest.mark.slow
def test_resume_continues_from_the_trainer_checkpoint(trained):
    root, _ = trained
    resumed = run_workflow(
        root, ["train.json"], num_epochs=3, resume_checkpoint=str(root / "models" / "checkpoint_epoch=2.pt"),
        ckpt_dir=str(root / "models_resumed"), output_dir=str(root / "eval_resumed"), **TINY,
    )
    trainer = resumed.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3
    assert trainer.state.iteration == 3 * len(resumed.parser.get_parsed_content("train#dataloader"))


@pytest.mark.slow
def test_evaluate_writes_roc_and_auc(trained):
    root, _ = trained
    workflow = run_workflow(root, ["train.json", "evaluate.json"], **TINY)
    roc = json.loads((root / "eval" / "roc.json").read_text())
    assert 0.0 <= roc["auc_ci"][0] <= roc["auc"] <= roc["auc_ci"][1] <= 1.0
    assert roc["n_pathological"] + roc["n_healthy"] == 4  # the test split of 20 phantoms
    assert (root / "eval" / "roc.png").stat().st_size > 0
    val_auc = workflow.parser.get_parsed_content("validate#evaluator").state.metrics["val_auc"]
    assert roc["auc"] == pytest.approx(val_auc)


@pytest.mark.slow
def test_evaluate_refuses_a_one_class_split_before_writing(trained):
    root, _ = trained
    run_workflow(root, ["train.json", "evaluate.json"], **TINY)
    before = {path.name: path.read_bytes() for path in (root / "eval").iterdir() if path.is_file()}
    lists = json.loads((root / "phantoms" / "datalist.json").read_text())
    lists["test"] = [item for item in lists["test"] if item["label"] == 0]
    one_class = root / "phantoms" / "one_class.json"
    one_class.write_text(json.dumps(lists))
    overrides = {**TINY, "phantoms": False}  # a prepared data set
    with pytest.raises(RuntimeError) as raised:  # MONAI's "Failed to evaluate" around the DatalistError
        run_workflow(root, ["train.json", "evaluate.json"], datalist=str(one_class), **overrides)
    assert "expected both classes" in str(raised.value.__cause__)
    assert {path.name: path.read_bytes() for path in (root / "eval").iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_inference_writes_probabilities(trained):
    root, _ = trained
    run_workflow(root, ["inference.json"], image_size=[64, 64])
    with open(root / "eval" / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4
    assert all(Path(name).suffix == ".png" and 0.0 <= float(p) <= 1.0 for name, p in rows)


@pytest.mark.slow
@pytest.mark.parametrize("task,expected_class", [("task_mammo.json", MobileNetV1), ("task_cxr.json", DenseNet121)])
def test_paper_task_runs_one_iteration(trained, task, expected_class):
    """The paper's settings (576×448 MobileNetV1, 256² DenseNet-121) train one iteration on the phantoms."""
    root, _ = trained
    out = root / task.removesuffix(".json")
    workflow = run_workflow(
        root, ["train.json", task], phantoms=None, num_epochs=1, batch_size=2, ckpt_dir=str(out / "models"),
        output_dir=str(out / "eval"), **{"train#trainer#epoch_length": 1},
    )
    assert type(workflow.parser.get_parsed_content("network_def")) is expected_class
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 1
    assert (out / "models" / "model.pt").is_file()
