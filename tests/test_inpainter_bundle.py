"""Inpainter bundle: overlays; end-to-end train (two phases, resume), evaluate and inference
on tiny phantoms; the paper's 8-level 576×448 configuration for one iteration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, run
from monai.networks.nets import DenseNet121
from monai.transforms import Compose, LoadImage, ScaleIntensity
from PIL import Image
from test_bad_input import chained

from cfattr_monai.bundle import load_network
from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.losses.inpainting import PCILoss
from cfattr_monai.networks.inpainter import PartialConvUNet
from cfattr_monai.networks.mobilenet import MobileNetV1

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inpainter"
SIZE = 32
TINY_NET = {"num_levels": 3, "channels": [4, 8, 8], "kernel_sizes": [7, 5, 3]}
PHANTOMS = {"kind": "mammo", "n": 10, "size": SIZE, "seed": 0}
TINY_DATA = {"train#dataset#data": "$@train#datalist[:2]", "validate#dataset#data": "$@validate#datalist[:2]"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inpainter")
    classifier = root / "classifier"
    (classifier / "configs").mkdir(parents=True)
    (classifier / "models").mkdir()
    network_def = {"_target_": "cfattr_monai.networks.mobilenet.MobileNetV1", "width_mult": 0.25}
    (classifier / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.manual_seed(0)
    torch.save(MobileNetV1(width_mult=0.25).state_dict(), classifier / "models" / "model.pt")  # untrained stand-in
    return {"datalist": write_phantom_dataset(root / "phantoms", **PHANTOMS), "classifier_bundle": str(classifier)}


def _bundle_copy(tmp_path: Path) -> Path:
    """The bundle's configs in tmp_path, so that models/ and eval/ land there."""
    bundle = tmp_path / "inpainter"
    (bundle / "configs").mkdir(parents=True)
    for config in (BUNDLE / "configs").iterdir():
        (bundle / "configs" / config.name).write_text(config.read_text())
    return bundle


def _overrides(ws: dict, bundle: Path) -> dict:
    return {
        "bundle_root": str(bundle),
        "dataset_dir": str(ws["datalist"].parent),
        "phantoms": PHANTOMS,
        "image_size": [SIZE, SIZE],
        "classifier_bundle": ws["classifier_bundle"],
        "device": "$torch.device('cpu')",
        **TINY_NET,
    }


@pytest.mark.parametrize(
    "overlay,levels,size",
    [
        ("configs/task_mammo.json", 8, [448, 576]),
        ("configs/task_cxr.json", 7, [256, 256]),
        ("configs/task_phantom_chest_densenet121.json", 7, [256, 256]),
    ],
)
def test_task_overlays_set_the_paper_architecture(overlay, levels, size):
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / config), str(BUNDLE / overlay)])
        net = parser.get_parsed_content("network_def")
        assert isinstance(net, PartialConvUNet) and len(net.encoder) == levels
        assert parser.get_parsed_content("image_size") == size


def _loss_weights(*configs: str) -> dict:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    parser["feature_extractor"] = "$None"  # no trained classifier needed to read the weights
    return parser.get_parsed_content("loss").lambdas


def test_paper_loss_weights_are_the_defaults_and_the_paper_overlays_keep_them():
    paper = {"valid": 1.0, "hole": 6.0, "perc": 0.05, "style": 120.0, "tv": 0.1}
    assert PCILoss(feature_extractor=None).lambdas == paper
    for overlay in ("task_mammo.json", "task_cxr.json"):
        assert _loss_weights("train.json", overlay) == paper, overlay
    demo = _loss_weights("train.json")  # documented demo deviation: no style term (docs/README.md)
    assert demo == {**paper, "style": 0.0}


@pytest.mark.parametrize(
    "overlay,suffix,longer", [("task_phantom_long.json", "long", True), ("task_phantom_chest.json", "chest", False)]
)
def test_phantom_overlays_keep_the_demo_network_and_write_elsewhere(overlay, suffix, longer):
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / overlay)])
    demo = ConfigParser()
    demo.read_config(str(BUNDLE / "configs" / "train.json"))
    for key in ("num_levels", "channels", "kernel_sizes", "image_size", "lambda_perc", "lambda_style"):
        assert parser.get_parsed_content(key) == demo.get_parsed_content(key), key
    assert (parser.get_parsed_content("phase1_epochs") > demo.get_parsed_content("phase1_epochs")) == longer
    for key, folder in (("ckpt_dir", f"models_{suffix}"), ("output_dir", f"eval_{suffix}")):
        assert parser.get_parsed_content(key).endswith(folder), "a phantom run must not overwrite the demo's models/eval"
    for classifier_overlay in parser.get_parsed_content("classifier_overlays"):
        assert (BUNDLE.parent / "classifier" / classifier_overlay).is_file(), classifier_overlay


def test_long_chest_overlay_trains_on_other_healthy_phantoms_and_evaluates_on_the_classifiers_data():
    files = [str(BUNDLE / "configs" / name) for name in ("train.json", "task_phantom_chest_long.json", "evaluate.json")]
    parser = ConfigParser()
    parser.read_config(files)
    chest = ConfigParser()
    chest.read_config([str(BUNDLE / "configs" / name) for name in ("train.json", "task_phantom_chest.json")])
    assert parser.get_parsed_content("eval_datalist") == chest.get_parsed_content("datalist")
    assert parser.get_parsed_content("eval_phantoms") == chest.get_parsed_content("phantoms")
    assert parser.get_parsed_content("classifier_overlays") == chest.get_parsed_content("classifier_overlays")
    training = parser.get_parsed_content("phantoms")
    assert parser.get_parsed_content("datalist") != chest.get_parsed_content("datalist")
    assert training["prevalence"] == 0.0 and training["seed"] != chest.get_parsed_content("phantoms")["seed"]
    for key, folder in (("ckpt_dir", "models_chest_long"), ("output_dir", "eval_chest_long")):
        assert parser.get_parsed_content(key).endswith(folder), key


def test_densenet121_chest_overlay_trains_on_its_classifiers_data_and_writes_elsewhere():
    overlay = "task_phantom_chest_densenet121.json"
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.json", overlay)])
    parser["bundle_root"] = str(BUNDLE)
    classifier_root = BUNDLE.parent / "classifier"
    classifier = ConfigParser()
    classifier.read_config([str(classifier_root / name) for name in ("configs/train.json",
                                                                      *parser.get_parsed_content("classifier_overlays"))])
    classifier["bundle_root"] = str(classifier_root)
    assert isinstance(classifier.get_parsed_content("network_def"), DenseNet121)
    for key in ("phantoms", "image_size"):
        assert parser.get_parsed_content(key) == classifier.get_parsed_content(key), key
    datalists = [Path(config.get_parsed_content("datalist")).resolve() for config in (parser, classifier)]
    assert datalists[0] == datalists[1]
    for key, folder in (("ckpt_dir", "models_chest_densenet121"), ("output_dir", "eval_chest_densenet121")):
        assert parser.get_parsed_content(key).endswith(folder), key


def _training_transform() -> Compose:
    """The training pre-processing of ``train.json`` and its hole mask, at the tests' ``SIZE``."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"image_size": [SIZE, SIZE]})
    return Compose(parser.get_parsed_content("preprocessing") + parser.get_parsed_content("holes")[:1])


def _edited_datalist(ws: dict, tmp_path: Path, edit) -> Path:
    """The workspace datalist with absolute paths, each item changed by ``edit(split, item)``, in ``tmp_path``."""
    root = Path(ws["datalist"]).parent
    lists = json.loads(Path(ws["datalist"]).read_text())
    for split, items in lists.items():
        for item in items:
            item.update({k: str(root / item[k]) for k in ("image", "lesion", "organ")})
            edit(split, item)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(lists))
    return datalist


def test_training_reads_organ_masks_stored_as_0_1_as_those_stored_as_0_255(workspace, tmp_path):
    """check_datalist accepts {0, 1} and {0, 255} organ masks as binary: both give the same organ and holes."""
    transform = _training_transform()
    root = Path(workspace["datalist"]).parent
    first = json.loads(Path(workspace["datalist"]).read_text())["training"][0]
    item = {k: str(root / first[k]) for k in ("image", "organ")}
    organ_0_1 = tmp_path / "organ.png"
    Image.fromarray((np.asarray(Image.open(item["organ"])) > 0).astype(np.uint8)).save(organ_0_1)
    stored_0_255 = transform.set_random_state(seed=0)(item)
    stored_0_1 = transform.set_random_state(seed=0)({**item, "organ": str(organ_0_1)})
    assert set(stored_0_255["organ"].unique().tolist()) == {0.0, 1.0}
    for key in ("organ", "valid_mask"):
        assert torch.equal(stored_0_1[key], stored_0_255[key]), key


@pytest.mark.parametrize("organ", ["absent", None, ""])
def test_an_item_without_an_organ_mask_gets_holes_anywhere_in_the_image(workspace, organ):
    """The data contract: a missing organ mask is the whole image (Shenzhen/Montgomery have none)."""
    transform = _training_transform()
    first = json.loads(Path(workspace["datalist"]).read_text())["training"][0]
    item = {"image": str(Path(workspace["datalist"]).parent / first["image"])}
    if organ != "absent":
        item["organ"] = organ
    out = transform.set_random_state(seed=0)(item)
    assert out["organ"].shape == (1, SIZE, SIZE) and bool((out["organ"] == 1).all())
    assert 0.0 < float((out["valid_mask"] == 0).float().mean()) < 1.0


def test_training_and_fig1c_on_a_data_set_without_organ_masks(workspace, tmp_path):
    datalist = _edited_datalist(workspace, tmp_path, lambda split, item: item.pop("organ"))
    bundle = _bundle_copy(tmp_path)
    overrides = {**_overrides(workspace, bundle), "datalist": str(datalist), "phantoms": False}
    run(config_file=str(bundle / "configs" / "train.json"), phase1_epochs=1, phase2_epochs=0, batch_size=2,
        val_interval=1, **TINY_DATA, **overrides)  # fmt: skip
    assert (bundle / "models" / "model.pt").is_file()
    run(config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")], n_runs=1,
        **overrides)  # fmt: skip
    assert json.loads((bundle / "eval" / "marginalization.json").read_text())["auc_none"]["runs"]


@pytest.mark.parametrize("split", ["training", "validation"])
def test_training_without_healthy_images_names_the_datalist_split_and_fix(workspace, tmp_path, split):
    """The inpainter trains and validates on label-0 images: a split without any is refused in initialize."""
    datalist = _edited_datalist(workspace, tmp_path, lambda name, item: name != split or item.update(label=1))
    bundle = _bundle_copy(tmp_path)
    overrides = {**_overrides(workspace, bundle), "datalist": str(datalist), "phantoms": False}
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train", **overrides)
    with pytest.raises(Exception) as info:
        workflow.initialize()
    message = "".join(map(str, chained(info.value)))
    assert f"{datalist}: split '{split}' holds no healthy image" in message, message
    assert "label 0" in message and f"Add label-0 images to '{split}'" in message
    assert not (bundle / "models").exists() and not (bundle / "eval").exists()


def _tiny_weights(path: Path, value: float | None = None) -> None:
    """A tiny inpainter's untrained state dict; ``value`` fills its first weight (e.g. NaN)."""
    torch.manual_seed(0)
    state = PartialConvUNet(**TINY_NET).state_dict()
    if value is not None:
        state["encoder.0.conv.weight"].fill_(value)
    torch.save(state, path)


def _truncated(path: Path) -> None:
    _tiny_weights(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "write, error, fragment",
    [
        (lambda p: torch.save(MobileNetV1(width_mult=0.25).state_dict(), p), ValueError, "PartialConvUNet"),
        (_truncated, ValueError, "weights_only=True"),
        (lambda p: torch.save({"net": torch.nn.Linear(1, 1)}, p), ValueError, "weights_only=True"),
        (lambda p: _tiny_weights(p, float("nan")), ValueError, "NaN or Inf"),
        (lambda p: None, FileNotFoundError, "not found"),
    ],
    ids=["classifier weights", "truncated", "pickled module", "NaN", "missing"],
)
def test_evaluation_refuses_bad_weights_and_keeps_earlier_results(workspace, tmp_path, write, error, fragment):
    """evaluate.json loads through load_weights: its error names the file, and the earlier results stay."""
    bundle = _bundle_copy(tmp_path)
    checkpoint, earlier = bundle / "models" / "model.pt", bundle / "eval" / "marginalization.json"
    checkpoint.parent.mkdir()
    earlier.parent.mkdir()
    earlier.write_text('{"earlier": "run"}')
    write(checkpoint)
    with pytest.raises(Exception) as info:
        run(config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")], n_runs=1,
            **_overrides(workspace, bundle))  # fmt: skip
    errors = chained(info.value)
    assert any(isinstance(e, error) and str(checkpoint) in str(e) and fragment in str(e) for e in errors), errors
    assert earlier.read_text() == '{"earlier": "run"}'


def test_inference_names_composites_uniquely_in_pair_order(workspace, tmp_path):
    """Images that share a file name (two folders, one image with two holes) get -2, -3 …, as in cfattr explain."""
    bundle = _bundle_copy(tmp_path)
    (bundle / "models").mkdir()
    _tiny_weights(bundle / "models" / "model.pt")  # untrained: the names are under test, not the fill
    root = Path(workspace["datalist"]).parent
    lists = json.loads(Path(workspace["datalist"]).read_text())
    first, second = [i for i in lists["test"] + lists["training"] if i["label"] == 1][:2]
    image, namesake = root / first["image"], tmp_path / "b" / Path(first["image"]).name
    namesake.parent.mkdir()
    namesake.write_bytes((root / second["image"]).read_bytes())  # another image under the same name
    pairs = [{"image": str(image), "hole": str(root / first["lesion"])},
             {"image": str(namesake), "hole": str(root / first["lesion"])},
             {"image": str(image), "hole": str(root / second["lesion"])}]  # fmt: skip
    out = tmp_path / "composites"
    overrides = {**_overrides(workspace, bundle), "pairs": pairs, "output_dir": str(out)}
    run(config_file=str(bundle / "configs" / "inference.json"), **overrides)
    names = [f"{image.stem}{suffix}_composite.png" for suffix in ("", "-2", "-3")]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    load = LoadImage(image_only=True)
    for name, pair in zip(names, pairs):
        source, valid = ScaleIntensity()(load(pair["image"])) * 255, load(pair["hole"]) == 0
        assert float((load(out / name) - source).abs()[valid].mean()) < 1.0, name  # its own image outside the hole


@pytest.mark.slow
def test_train_two_phases_resume_evaluate_and_infer(workspace, tmp_path):
    bundle = _bundle_copy(tmp_path)
    overrides = _overrides(workspace, bundle)
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
        phase1_epochs=1, phase2_epochs=1, batch_size=2, val_interval=1, **TINY_DATA, **overrides,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    network = workflow.parser.get_parsed_content("network")
    assert network.encoder_bn_frozen, "phase 2 did not freeze the contraction-path BN"
    assert workflow.parser.get_parsed_content("optimizer").param_groups[0]["lr"] == pytest.approx(2e-4)  # phase-2 rate
    checkpoint = bundle / "models" / "checkpoint_epoch=2.pt"
    assert checkpoint.is_file() and (bundle / "models" / "model.pt").is_file()
    assert list((bundle / "eval").glob("events.out.tfevents.*")), "TensorBoard stats/previews missing"

    # resume: the trainer state continues at epoch 3
    run(config_file=str(bundle / "configs" / "train.json"), phase1_epochs=1, phase2_epochs=2, batch_size=2,
        resume_checkpoint=str(checkpoint), **TINY_DATA, **overrides)  # fmt: skip
    assert (bundle / "models" / "checkpoint_epoch=3.pt").is_file()

    # Fig. 1c protocol: train.json + evaluate.json
    run(config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")], n_runs=2, **overrides)
    results = json.loads((bundle / "eval" / "marginalization.json").read_text())
    for key in ("auc_none", "auc_healthy_inpaint", "auc_lesion_inpaint"):
        assert 0.0 <= results[key]["mean"] <= 1.0
    assert set(results["mean_abs_dp_healthy"]) == set(results["psnr"]) == set(results["ssim"]) == {"inpaint", "blur", "blur_context", "noise", "mean"}
    assert len(results["auc_healthy_inpaint"]["runs"]) == 2
    assert (bundle / "eval" / "fig1c_roc.png").stat().st_size > 1000

    # inference: composites of the pathological test images with their lesion as hole
    run(config_file=str(bundle / "configs" / "inference.json"), **overrides)
    composites = sorted((bundle / "eval" / "composites").glob("*_composite.png"))
    assert composites, "no composites written"

    # one hole for two images: each composite is named after its image, none overwrites the other
    items = json.loads(Path(workspace["datalist"]).read_text())["test"][:2]
    root = Path(workspace["datalist"]).parent
    hole = str(root / next(i["lesion"] for i in json.loads(Path(workspace["datalist"]).read_text())["test"] if i["label"] == 1))
    pairs = [{"image": str(root / item["image"]), "hole": hole} for item in items]
    shared = tmp_path / "shared_hole"
    run(config_file=str(bundle / "configs" / "inference.json"), pairs=pairs, output_dir=str(shared), **overrides)
    assert sorted(p.name for p in shared.glob("*_composite.png")) == sorted(
        Path(item["image"]).stem + "_composite.png" for item in items
    )
    # a bad pair is refused before anything is written
    with pytest.raises(Exception) as info:
        run(config_file=str(bundle / "configs" / "inference.json"), pairs=[*pairs, {"image": pairs[0]["image"]}],
            output_dir=str(tmp_path / "refused"), **overrides)  # fmt: skip
    assert "pair 2 lacks 'hole'" in "".join(map(str, chained(info.value)))
    assert not (tmp_path / "refused").exists()

    # the attributor's route: load_network on the bundle folder, with the overlay the weights were trained with
    (bundle / "configs" / "task_tiny.json").write_text(json.dumps(TINY_NET))
    inpainter = load_network(bundle, overlays=["configs/task_tiny.json"])
    assert isinstance(inpainter, PartialConvUNet) and not inpainter.training
    with pytest.raises(ValueError, match="another network"):
        load_network(bundle)  # the demo architecture does not fit the tiny weights


@pytest.mark.slow
def test_paper_mammography_config_runs_one_iteration(workspace, tmp_path):
    """8 levels, depths 64…512, 576×448 (task_mammo.json) on phantoms resized to that size; L_PCI without features."""
    bundle = _bundle_copy(tmp_path)
    overrides = {k: v for k, v in _overrides(workspace, bundle).items() if k not in (*TINY_NET, "image_size")}
    run(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "task_mammo.json")],
        phase1_epochs=1, phase2_epochs=0, feature_extractor="$None", val_interval=1,
        **{"train#dataset#data": "$@train#datalist[:1]", "validate#dataset#data": "$@validate#datalist[:1]"}, **overrides,
    )  # fmt: skip
    state = torch.load(bundle / "models_mammo" / "model.pt", weights_only=True)  # the task's own folder
    assert state["encoder.7.conv.weight"].shape == (512, 512, 3, 3)


