"""Fig. 1c study inputs and outputs: masks as the data contract allows them (absent = empty lesion / whole organ),
and a data set without lesion masks (no lesion-inpainting AUC or curve)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.metrics.marginalization import load_split, marginalization_study, save_fig1c, write_study
from cfattr_monai.transforms.marginalize import Marginalizer, get_marginalizer


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("split") / "ph", kind="mammo", n=10, size=32, seed=0)


@pytest.mark.parametrize("drop", [(), ("lesion",), ("organ",), ("lesion", "organ")])
def test_absent_masks_follow_the_data_contract(datalist, tmp_path, drop):
    lists = json.loads(datalist.read_text())
    for items in lists.values():
        for item in items:
            item["image"] = str(datalist.parent / item["image"])
            for key in ("lesion", "organ"):
                item[key] = str(datalist.parent / item[key])
            for key in drop:
                item.pop(key)
    trimmed = tmp_path / "datalist.json"
    trimmed.write_text(json.dumps(lists))
    full, data = load_split(datalist, "training"), load_split(trimmed, "training")
    assert data["image"].shape == data["lesion"].shape == data["organ"].shape == full["image"].shape
    assert bool((data["label"] == full["label"]).all())
    for key, absent in (("lesion", 0.0), ("organ", 1.0)):
        expected = (full[key] * 0 + absent) if key in drop else full[key]
        assert bool((data[key] == expected).all()), key
    if "lesion" not in drop:
        assert data["lesion"].sum() > 0  # the phantoms do have lesions


@pytest.mark.parametrize("keys", [("lesion",), ("organ",), ("lesion", "organ")])
def test_masks_stored_as_0_1_read_as_those_stored_as_0_255(datalist, tmp_path, keys):
    """check_datalist accepts {0, 1} and {0, 255} masks as binary: both give the same masks (value > 0)."""
    lists = _absolute(datalist, lambda items: None)
    for item in lists["test"]:
        for key in keys:
            source = Path(item[key])
            item[key] = str(tmp_path / key / source.name)
            Path(item[key]).parent.mkdir(exist_ok=True)
            Image.fromarray((np.asarray(Image.open(source)) > 0).astype(np.uint8)).save(item[key])
    (tmp_path / "datalist.json").write_text(json.dumps(lists))
    stored_0_255, stored_0_1 = load_split(datalist, "test"), load_split(tmp_path / "datalist.json", "test")
    assert stored_0_255["lesion"].sum() > 0 and stored_0_255["organ"].sum() > 0
    for key in ("lesion", "organ"):
        assert torch.equal(stored_0_1[key], stored_0_255[key]), key


def test_missing_datalist_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_split(tmp_path / "absent.json")


def _absolute(datalist, edit) -> dict:
    lists = json.loads(datalist.read_text())
    for item in lists["test"]:
        item.update({k: str(datalist.parent / item[k]) for k in ("image", "lesion", "organ")})
    edit(lists["test"])
    return lists


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda items: items.clear(), ["split 'test' is []", "non-empty list"]),
        (lambda items: items[0].update(image="/nowhere/x.png"), ["/nowhere/x.png does not exist"]),
        (lambda items: items[0].update(organ=items[0]["image"].replace("images", "nothing")), ["does not exist"]),
        (lambda items: items[0].update(label="1"), ["label '1'", "expected 0 (healthy) or 1"]),
    ],
)
def test_bad_split_names_the_file_and_the_fix(datalist, tmp_path, edit, fragments):
    from cfattr_monai.data.validate import DatalistError

    broken = tmp_path / "datalist.json"
    broken.write_text(json.dumps(_absolute(datalist, edit)))
    with pytest.raises(DatalistError) as info:
        load_split(broken, "test")
    assert str(broken) in str(info.value) and all(f in str(info.value) for f in fragments)


def test_empty_mask_paths_are_absent(datalist, tmp_path):
    lists = _absolute(datalist, lambda items: items[0].update(lesion="", organ=None))
    (tmp_path / "datalist.json").write_text(json.dumps(lists))
    data = load_split(tmp_path / "datalist.json", "test")
    assert float(data["lesion"][0].sum()) == 0.0 and bool((data["organ"][0] == 1).all())


@pytest.mark.parametrize("annotated", [True, False])
def test_lesion_inpainting_needs_lesion_masks(tmp_path, annotated):
    torch.manual_seed(0)
    images = torch.rand(8, 1, 16, 16)
    lesion = torch.zeros_like(images)
    if annotated:
        lesion[4:, :, 4:8, 4:8] = 1.0
    data = {"image": images, "lesion": lesion, "organ": torch.ones_like(images),
            "label": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1)).eval()
    results = marginalization_study(classifier, {"inpaint": get_marginalizer("mean")}, data, n_runs=2)
    assert (results["auc_lesion_inpaint"] is not None) is annotated
    assert ("lesion_inpaint" in results["roc"]) is annotated
    assert save_fig1c(results, tmp_path / "fig.png").stat().st_size > 1000


def test_lesion_inpainting_leaves_out_pathological_images_without_a_mask():
    """(iii) over the healthy images and the pathological ones with a lesion mask: the two masses without one would
    keep their score and hide the drop."""
    images = torch.full((8, 1, 16, 16), 0.2)
    images[4:, :, 4:8, 4:8] = 0.9  # every pathological image has the lesion …
    lesion = torch.zeros_like(images)
    lesion[4:6, :, 4:8, 4:8] = 1.0  # … only two carry its mask
    data = {"image": images, "lesion": lesion, "organ": torch.ones_like(images),
            "label": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1)).eval()
    with torch.no_grad():  # the mean brightness of the lesion's square
        classifier[1].weight.copy_(lesion[4].flatten()[None] / 16.0)
        classifier[1].bias.fill_(-0.5)
    results = marginalization_study(classifier, {"inpaint": get_marginalizer("mean")}, data, n_runs=2)
    assert results["auc_none"]["mean"] == 1.0 and results["settings"]["n_lesion_images"] == 2
    assert results["auc_lesion_inpaint"]["mean"] < 0.75  # 0.75 or more if the two unmasked masses counted
    assert set(results["roc"]["lesion_inpaint"]["tpr"]) <= {0.0, 0.5, 1.0}  # two pathological images on the curve


def test_the_fig1c_curve_encloses_the_printed_auc_also_with_tied_scores():
    """A classifier that gives half the images the same score: ties count ½, on the curve as in the AUC."""
    images = torch.zeros(8, 1, 16, 16)
    images[:, :, 0, :8] = torch.tensor([0.0, 0.2, 0.5, 0.5, 0.5, 0.5, 0.7, 0.9])[:, None, None]
    data = {"image": images, "lesion": torch.zeros_like(images), "organ": torch.ones_like(images),
            "label": torch.tensor([0, 0, 0, 1, 0, 1, 1, 1])}
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1)).eval()
    with torch.no_grad():
        classifier[1].weight.zero_()
        classifier[1].weight[0, 0] = 4.0
        classifier[1].bias.fill_(-2.0)
    results = marginalization_study(classifier, {"inpaint": get_marginalizer("mean")}, data, n_runs=1)
    curve = results["roc"]["none"]
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(results["auc_none"]["mean"]) == 0.875


@pytest.mark.parametrize("image_size", [None, (16, 16), (40, 24)])
def test_split_is_resized_to_the_networks_input(datalist, image_size):
    data = load_split(datalist, "test", image_size)
    expected = (32, 32) if image_size is None else tuple(image_size)
    assert tuple(data["image"].shape[-2:]) == tuple(data["lesion"].shape[-2:]) == tuple(data["organ"].shape[-2:]) == expected
    for key in ("lesion", "organ"):
        assert set(data[key].unique().tolist()) <= {0.0, 1.0}, key
    assert 0.0 <= float(data["image"].min()) and float(data["image"].max()) <= 1.0


def test_study_of_a_data_set_without_lesion_masks(datalist, tmp_path):
    lists = json.loads(datalist.read_text())
    for items in lists.values():
        for item in items:
            item.pop("lesion")
            item.update({k: str(datalist.parent / item[k]) for k in ("image", "organ")})
    unannotated = tmp_path / "datalist.json"
    unannotated.write_text(json.dumps(lists))
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 1)).eval()
    results = write_study(classifier, {"inpaint": get_marginalizer("mean")}, unannotated, tmp_path / "out",
                          split="training", n_runs=1, image_size=(16, 16))
    assert results["auc_lesion_inpaint"] is None and results["settings"]["image_size"] == [16, 16]
    assert (tmp_path / "out" / "marginalization.json").is_file() and (tmp_path / "out" / "fig1c_roc.png").is_file()


def _study_data(n: int = 8, size: int = 16) -> dict:
    torch.manual_seed(0)
    images = torch.rand(n, 1, size, size)
    return {"image": images, "lesion": torch.zeros_like(images), "organ": torch.ones_like(images),
            "label": torch.arange(n) % 2}


class _MeanIntensity(torch.nn.Module):
    """p(c|I) = σ(gain · (mean(I) − 0.5)): moves with any change of the pixels, more for a larger gain."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.gain * (images.flatten(1).mean(1, keepdim=True) - 0.5)


@pytest.mark.parametrize(
    "gain, std, floor_zero",
    [(0.0, 0.01, True), (1000.0, 0.01, False), (1000.0, 0.05, False)],
)
def test_sensitivity_floor(gain, std, floor_zero):
    marginalizers = {"inpaint": get_marginalizer("mean")}
    floor = marginalization_study(_MeanIntensity(gain), marginalizers, _study_data(), n_runs=2, floor_noise_std=std)[
        "sensitivity_floor"
    ]
    assert floor["noise_std"] == std
    assert (floor["mean_abs_dp_healthy"] == 0.0) is floor_zero
    # the noise only touches the hole and has the asked σ: PSNR ≈ 20·log10(1 / σ) (clipping at 0 and 1 lowers σ)
    assert -20 * math.log10(std) - 0.5 <= floor["psnr"] <= -20 * math.log10(std) + 3


@pytest.mark.parametrize("std", [0.0, -0.01])
def test_sensitivity_floor_needs_noise(std):
    with pytest.raises(ValueError, match="floor_noise_std"):
        marginalization_study(_MeanIntensity(1.0), {"inpaint": get_marginalizer("mean")}, _study_data(), n_runs=1, floor_noise_std=std)


def _twin_data(n: int = 8, size: int = 16) -> dict:
    """Healthy twins (mean ≈ 0.5) + a bright 4×4 lesion on every odd image."""
    torch.manual_seed(1)
    twins = 0.3 + 0.4 * torch.rand(n, 1, size, size)
    lesion = torch.zeros_like(twins)
    lesion[1::2, :, 6:10, 6:10] = 1.0
    return {"image": twins + 0.3 * lesion, "twin": twins, "lesion": lesion, "organ": torch.ones_like(twins),
            "label": torch.arange(n) % 2}


@pytest.mark.parametrize(
    "gain, with_twins, inpaint_dp_zero, mean_dp_zero",
    [
        (100.0, True, True, False),  # the twin's own pixels in the hole: the true counterfactual, Δp = 0
        (0.0, True, True, True),  # a classifier that ignores the pixels: no fill moves it
        (100.0, False, None, None),  # no twins (real data): no twin figures
    ],
)
def test_counterfactuals_scored_against_the_healthy_twins(gain, with_twins, inpaint_dp_zero, mean_dp_zero):
    data = _twin_data()
    twins, sick = data["twin"], data["label"] == 1

    def truth(images, holes):  # the twin's pixels in the hole; called on every image and on the pathological ones
        return images * (1 - holes) + (twins if len(images) == len(twins) else twins[sick]) * holes

    if not with_twins:
        data.pop("twin")
    results = marginalization_study(_MeanIntensity(gain), {"inpaint": truth, "mean": get_marginalizer("mean")}, data,
                                    n_runs=2)
    if not with_twins:
        assert "twin_abs_dp" not in results and "twin_psnr" not in results
        return
    assert (results["twin_abs_dp"]["inpaint"] < 1e-6) is inpaint_dp_zero
    assert (results["twin_abs_dp"]["mean"] < 1e-6) is mean_dp_zero
    assert results["twin_psnr"]["inpaint"] >= 100 > results["twin_psnr"]["mean"]  # exact pixels vs a flat fill


class _ConstantFill(Marginalizer):
    """Fills every hole with one value."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        return torch.full_like(image, self.value)


@pytest.mark.parametrize("value, sign", [(1.0, 1.0), (0.0, -1.0)])
def test_signed_score_change_tells_brightening_from_darkening_fills(value, sign):
    # p rises with the mean intensity: a white fill moves every healthy score up, a black fill down
    results = marginalization_study(_MeanIntensity(20.0), {"inpaint": _ConstantFill(value)}, _study_data(), n_runs=2)
    signed, absolute = results["mean_dp_healthy"]["inpaint"], results["mean_abs_dp_healthy"]["inpaint"]
    assert absolute > 0 and signed == pytest.approx(sign * absolute)
