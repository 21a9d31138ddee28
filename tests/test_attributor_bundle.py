"""Attributor bundle: overlays and end-to-end 1-iteration train + inference runs on tiny phantoms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, run

from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.explain.counterfactual import CounterfactualExplainer, load_explainer, read_classification_threshold
from cfattr_monai.metrics.counterfactual import main as acceptance_main
from cfattr_monai.networks.inpainter import PartialConvUNet
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.report.evaluate import evaluate_attribution

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "attributor"
SIZE = 64
CLASSIFIER = {"_target_": "cfattr_monai.networks.mobilenet.MobileNetV1", "width_mult": 0.25}
INPAINTER = {
    "_target_": "cfattr_monai.networks.inpainter.PartialConvUNet",
    "channels": [4, 8, 8],
    "kernel_sizes": [7, 5, 3],
    "num_levels": 3,
}


def _stand_in_bundle(folder: Path, network_def: dict, network: torch.nn.Module) -> Path:
    """A bundle folder that ``load_network`` accepts: configs/inference.json + models/model.pt (untrained)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("attributor")
    torch.manual_seed(0)
    inpainter = PartialConvUNet(channels=(4, 8, 8), kernel_sizes=(7, 5, 3), num_levels=3)
    return {
        "root": root,
        "datalist": write_phantom_dataset(root / "phantoms", kind="mammo", n=10, size=SIZE, seed=0),
        "classifier_bundle": _stand_in_bundle(root / "classifier", CLASSIFIER, MobileNetV1(width_mult=0.25)),
        "inpainter_bundle": _stand_in_bundle(root / "inpainter", INPAINTER, inpainter),
    }


def _overrides(ws: dict, bundle_root: Path) -> dict:
    return {
        "bundle_root": str(bundle_root),
        "datalist": str(ws["datalist"]),
        "phantoms": {"kind": "mammo", "n": 10, "size": SIZE, "seed": 0},
        "image_size": [SIZE, SIZE],
        "classifier_bundle": str(ws["classifier_bundle"]),
        "inpainter_bundle": str(ws["inpainter_bundle"]),
        "device": "$torch.device('cpu')",
    }


@pytest.mark.parametrize("overlay", ["configs/task_mammo.json", "configs/task_cxr.json", "configs/task_phantom_chest.json"])
def test_task_overlays_parse(overlay):
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / overlay)])
    assert len(parser.get_parsed_content("image_size")) == 2
    # the early stopper builds: EarlyStopOrRestart refuses a restart_patience that is not below the patience
    assert parser.get_parsed_content("validate#early_stop").restart_patience < parser.get_parsed_content("early_stop_patience")
    for bundle in ("classifier", "inpainter"):  # the overlays named for the other bundles exist there
        for other in parser.get_parsed_content(f"{bundle}_overlays"):
            assert (BUNDLE.parent / bundle / other).is_file(), (bundle, other)


def test_the_trainer_gives_the_loss_the_logits_of_the_maps_encoder_pass(workspace, tmp_path):
    """train#inferer returns (map, logits): the same loss as the map alone, without a classifier pass over the image."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(_overrides(workspace, tmp_path))
    network, loss, inferer = (parser.get_parsed_content(k) for k in ("network", "loss", "train#inferer"))
    image = torch.rand(2, 1, SIZE, SIZE)
    target = torch.cat([image, torch.ones_like(image)], 1)
    calls = []
    network.classifier.register_forward_hook(lambda module, args, output: calls.append(args[0]))
    with torch.no_grad():
        from_pair, after_pair = loss(inferer(image, network), target), len(calls)
        assert torch.equal(from_pair, loss(network(image), target))
    assert after_pair == 1 and len(calls) == 3  # π(M) only; the map alone also scores the image


@pytest.mark.slow
def test_train_then_inference_end_to_end(workspace, tmp_path, capsys):
    # a copy of the bundle's configs, so that models/, runs/ and eval/ land in tmp_path
    bundle = tmp_path / "attributor"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.json", "inference.json", "logging.conf"):
        (bundle / "configs" / name).write_text((BUNDLE / "configs" / name).read_text())
    overrides = _overrides(workspace, bundle)
    run(config_file=str(bundle / "configs" / "train.json"), num_epochs=1, batch_size=4, delta=0.2, **overrides)
    assert (bundle / "models" / "model.pt").is_file()
    assert (bundle / "models" / "classifier_fingerprint.json").is_file()
    assert list((bundle / "runs").glob("events.out.tfevents.*")), "TensorBoard previews/stats missing"

    # resumable: the trainer checkpoint has the other bundles' name and carries on at epoch 2
    checkpoint = bundle / "models" / "checkpoint_epoch=1.pt"
    assert checkpoint.is_file()
    run(config_file=str(bundle / "configs" / "train.json"), num_epochs=2, batch_size=4, delta=0.2,
        resume_checkpoint=str(checkpoint), **overrides)
    assert (bundle / "models" / "checkpoint_epoch=2.pt").is_file()

    # a run that fails before its first validation (here: model.pt given as resume file) leaves the trained bundle
    # as it was: the fingerprint (classifier hash and θ) is only written with a new model.pt
    fingerprint = (bundle / "models" / "classifier_fingerprint.json").read_text()
    with pytest.raises(RuntimeError) as raised:  # MONAI's "Failed to evaluate" around the check's ValueError
        run(config_file=str(bundle / "configs" / "train.json"), num_epochs=3, batch_size=4, delta=0.2,
            classification_threshold=0.2, resume_checkpoint=str(bundle / "models" / "model.pt"), **overrides)
    assert "not a trainer checkpoint" in str(raised.value.__cause__)
    assert (bundle / "models" / "classifier_fingerprint.json").read_text() == fingerprint

    run(config_file=str(bundle / "configs" / "inference.json"), data_list_key="test", **overrides)
    rows = list(csv.DictReader((bundle / "eval" / "explanations" / "explanations.csv").open()))
    assert len(rows) == 2  # n=10, 20 % test split
    for row in rows:
        assert 0.0 <= float(row["p"]) <= 1.0 and 0.0 <= float(row["p_counterfactual"]) <= 1.0
        for kind in ("map", "mask", "overlay", "counterfactual"):
            assert (bundle / "eval" / "explanations" / row[kind]).is_file()

    # a second inference into the same folder keeps the first table unless told to resume or overwrite
    table = (bundle / "eval" / "explanations" / "explanations.csv").read_text()
    with pytest.raises(RuntimeError) as raised:
        run(config_file=str(bundle / "configs" / "inference.json"), data_list_key="test", **overrides)
    assert "--overwrite True" in str(raised.value.__cause__)
    assert (bundle / "eval" / "explanations" / "explanations.csv").read_text() == table
    run(config_file=str(bundle / "configs" / "inference.json"), data_list_key="test", overwrite=True, **overrides)
    assert len(list(csv.DictReader((bundle / "eval" / "explanations" / "explanations.csv").open()))) == 2

    # the acceptance figures use the θ and δ the attributor was trained for, and the healthy twins of the phantoms
    (bundle / "configs" / "workspace.json").write_text(json.dumps(_overrides(workspace, bundle)))
    fingerprint = bundle / "models" / "classifier_fingerprint.json"
    recorded = json.loads(fingerprint.read_text())
    assert 0 < recorded["delta"] <= 1  # training records its δ
    # ≠ the config's Youden point and δ
    fingerprint.write_text(json.dumps({**recorded, "classification_threshold": 0.123, "delta": 0.0456}))
    capsys.readouterr()
    acceptance_main([str(bundle), "--overlays", "configs/workspace.json", "--device", "cpu"])
    printed = capsys.readouterr().out  # after the bundle runs' logging.conf, MONAI's warnings also go to stdout
    summary = json.loads(printed[printed.index("{\n"):])
    assert summary["threshold"] == read_classification_threshold(bundle / "models") == 0.123
    assert summary["delta"] == 0.0456
    assert summary["images"] == 2 and "twin_flipped" in summary
    fingerprint.write_text(json.dumps(recorded))

    # the explainer interface (CLI, benchmark, evaluation) loads the same bundle
    (bundle / "configs" / "inference.json").write_text(
        json.dumps({**json.loads((BUNDLE / "configs" / "inference.json").read_text()), **_overrides(workspace, bundle)})
    )
    explainer = load_explainer(bundle)
    assert isinstance(explainer, CounterfactualExplainer)
    out = explainer(torch.rand(2, 1, SIZE, SIZE))
    assert out["map"].shape == out["mask"].shape == out["counterfactual"].shape == (2, 1, SIZE, SIZE)

    # Table 1 evaluation, with lesion masks and (chest X-ray style) without any
    lists = json.loads(Path(workspace["datalist"]).read_text())
    positives = sum(item["label"] for item in lists["test"])
    for items in lists.values():
        for item in items:
            item.pop("lesion")
            item.update({k: str(Path(workspace["datalist"]).parent / item[k]) for k in ("image", "organ")})
    unannotated = tmp_path / "no_lesions.json"
    unannotated.write_text(json.dumps(lists))
    for datalist, annotated in ((workspace["datalist"], True), (unannotated, False)):
        fragment = evaluate_attribution(bundle, datalist, tmp_path / f"eval_{annotated}", area_reference="image")
        assert fragment["lesion_ground_truth"] is annotated and fragment["n_lesion_images"] == positives
        assert (fragment["ours"]["H"]["n"] > 0) is annotated and fragment["ours"]["A"]["n"] == positives
        assert fragment["settings"]["image_size"] == [SIZE, SIZE]  # the bundle's input size
        assert fragment["settings"]["classification_threshold"] == read_classification_threshold(bundle / "models")

    # a fingerprint without θ (written before training recorded it): counted at 0.5, with a warning naming the fix
    recorded = json.loads(fingerprint.read_text())
    fingerprint.write_text(json.dumps({**recorded, "classification_threshold": None}))
    with pytest.warns(UserWarning, match="records no classification_threshold.*retrain the attributor"):
        fragment = evaluate_attribution(bundle, workspace["datalist"], tmp_path / "no_theta", area_reference="image")
    assert fragment["settings"]["classification_threshold"] == 0.5
    fingerprint.write_text(json.dumps(recorded))

    # another checkpoint folder (e.g. the longer schedule's models_long/) is evaluated, not models/: given as the
    # checkpoint, or as the ckpt_dir of a task overlay (as the paper tasks' models_mammo/ and models_cxr/)
    (bundle / "models").rename(bundle / "models_long")
    (bundle / "configs" / "long.json").write_text(json.dumps({"ckpt_dir": "$@bundle_root + '/models_long'"}))
    for how in ({"checkpoint": "models_long/model.pt"}, {"overlays": ["configs/long.json"]}):
        fragment = evaluate_attribution(bundle, workspace["datalist"], tmp_path / "eval_long", **how)
        assert fragment["settings"]["checkpoint"] == str(bundle / "models_long" / "model.pt"), how
        assert fragment["n_flagged"] >= 0
    (bundle / "models_long").rename(bundle / "models")

    # another classifier than the one trained with is refused
    other = _stand_in_bundle(tmp_path / "other_classifier", CLASSIFIER, MobileNetV1(width_mult=0.25))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    (bundle / "configs" / "inference.json").write_text(json.dumps({**config, "classifier_bundle": str(other)}))
    with pytest.raises(ValueError, match="differ"):
        load_explainer(bundle)


@pytest.mark.slow
def test_mammography_task_runs_one_iteration_at_576x448(workspace, tmp_path):
    """The paper's mammography overlay (576×448, SGD 1e-6..1e-4) trains for one iteration (stand-in networks)."""
    bundle = tmp_path / "attributor"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.json", "task_mammo.json", "logging.conf"):
        (bundle / "configs" / name).write_text((BUNDLE / "configs" / name).read_text())
    overrides = {**_overrides(workspace, bundle), "classifier_overlays": [], "inpainter_overlays": []}
    overrides.pop("image_size")  # keep the overlay's 576×448
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "task_mammo.json")]
    run(config_file=configs, num_epochs=1, batch_size=1, delta=0.2, **{"train#trainer#epoch_length": 1}, **overrides)
    assert (bundle / "models_mammo" / "model.pt").is_file() and not (bundle / "models").exists()  # the task's folder
    parser = ConfigParser()
    parser.read_config(configs)
    assert parser.get_parsed_content("image_size") == [448, 576]
    assert parser.get_parsed_content("learning_rate_min") == 1e-6 and parser.get_parsed_content("learning_rate_max") == 1e-4
