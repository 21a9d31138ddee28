"""CounterfactualExplainer: one attributor pass, output contract, fingerprint files, acceptance summary, flip rate."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.explain.counterfactual import (
    FINGERPRINT_FILE,
    CounterfactualExplainer,
    check_classifier_fingerprint,
    write_classifier_fingerprint,
)
from cfattr_monai.handlers.flip_rate import CounterfactualFlipRate
from cfattr_monai.metrics.counterfactual import acceptance_summary
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.classifier_output import pathology_probability
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.transforms.marginalize import get_marginalizer


class CountingAttributor(nn.Module):
    """Marks the left half of the image; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        soft = torch.zeros_like(images[:, :1])
        soft[..., : images.shape[-1] // 2] = 0.9
        return soft


class LeftBrightness(nn.Module):
    """Logit grows with the brightness of the left half: darkening it makes the image 'healthy'."""

    def forward(self, images):
        return 20 * (images[..., : images.shape[-1] // 2].flatten(1).mean(dim=1, keepdim=True) - 0.25)


def _explainer() -> tuple[CounterfactualExplainer, CountingAttributor]:
    attributor = CountingAttributor()
    darken = lambda image, mask: (1 - mask) * image  # noqa: E731
    return CounterfactualExplainer(attributor, LeftBrightness(), darken), attributor


def test_attribute_is_one_forward_pass_with_thresholded_mask():
    explainer, attributor = _explainer()
    soft, binary = explainer.attribute(torch.rand(3, 1, 16, 16))
    assert attributor.calls == 1
    assert torch.equal(binary, (soft > 0.55).float())


def test_forward_contract():
    explainer, attributor = _explainer()
    images = torch.full((2, 1, 16, 16), 0.8)
    out = explainer(images)
    assert attributor.calls == 1
    assert set(out) == {"map", "mask", "counterfactual", "p", "p_counterfactual"}
    assert out["counterfactual"].shape == images.shape and out["p"].shape == (2,)
    assert bool((out["p"] > 0.5).all()) and bool((out["p_counterfactual"] < 0.5).all())


def test_with_attention_gated_unet_and_mean_marginalizer():
    classifier = MobileNetV1(width_mult=0.25).eval()
    explainer = CounterfactualExplainer(AttentionGatedUNet(classifier), classifier, get_marginalizer("mean"))
    with torch.no_grad():
        out = explainer(torch.rand(2, 1, 64, 64))
    assert out["map"].shape == (2, 1, 64, 64) and 0 <= float(out["map"].min()) <= float(out["map"].max()) <= 1


@pytest.mark.parametrize("shared", [True, False], ids=["attributor on this classifier", "another classifier"])
def test_p_comes_from_the_attributors_encoder_pass_when_it_shares_the_classifier(shared):
    """p(c|I) from the attributor's own encoder pass (its classifier's head on the last feature map): the classifier
    then runs once per forward (on π(M̂)), and p is the classifier's own, bit for bit."""
    torch.manual_seed(0)
    classifier = MobileNetV1(width_mult=0.25).eval()
    attributor = AttentionGatedUNet(classifier if shared else MobileNetV1(width_mult=0.25)).eval()
    explainer = CounterfactualExplainer(attributor, classifier, get_marginalizer("mean"))
    calls = []
    classifier.register_forward_hook(lambda *_: calls.append(1))
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        out = explainer(images)
        assert len(calls) == (1 if shared else 2)
        assert torch.equal(out["p"], pathology_probability(classifier(images)))
        assert torch.equal(out["map"], attributor(images))


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="CounterfactualExplainer: threshold must be in \\(0, 1\\)"):
        CounterfactualExplainer(CountingAttributor(), LeftBrightness(), lambda i, m: i, threshold=threshold)


def test_fingerprint_round_trip_and_mismatch(tmp_path):
    classifier = MobileNetV1(width_mult=0.25)
    path = write_classifier_fingerprint(classifier, tmp_path)
    assert path.name == FINGERPRINT_FILE and "sha256" in json.loads(path.read_text())
    check_classifier_fingerprint(classifier, tmp_path)
    with pytest.raises(ValueError, match="differ"):
        check_classifier_fingerprint(MobileNetV1(width_mult=0.25), tmp_path)
    with pytest.raises(FileNotFoundError):
        check_classifier_fingerprint(classifier, tmp_path / "missing")


@pytest.mark.parametrize(
    "p, p_counterfactual, area_fraction, expected",
    [
        ([0.9, 0.8], [0.2, 0.3], 0.05, 1.0),  # both flipped, small maps
        ([0.9, 0.8], [0.2, 0.7], 0.05, 0.5),  # one not flipped
        ([0.9, 0.8], [0.2, 0.3], 0.5, 0.0),  # maps too large
        ([0.1, 0.2], [0.0, 0.0], 0.05, 0.0),  # nothing flagged
    ],
)
def test_flip_rate(p, p_counterfactual, area_fraction, expected):
    mask = torch.zeros(2, 1, 10, 10)
    mask.view(2, -1)[:, : int(area_fraction * 100)] = 1.0
    metric = CounterfactualFlipRate(delta=0.1)
    metric.update((mask, torch.tensor(p), torch.tensor(p_counterfactual)))
    assert metric.compute() == pytest.approx(expected)


def test_acceptance_summary_on_tiny_phantoms(tmp_path):
    datalist = write_phantom_dataset(tmp_path / "phantoms", kind="mammo", n=10, size=32, seed=0)
    explainer, _ = _explainer()
    summary = acceptance_summary(explainer, datalist, "test", (32, 32), delta=0.6, randomization_images=0)
    assert summary["images"] == 2 and summary["lesion_images"] == 1
    assert summary["mean_area_healthy_images"] == pytest.approx(0.5)
    for key in ("flipped", "oracle_flipped", "lesion_hit", "mean_area_flagged", "twin_flipped",
                "flipped_where_twin_flips"):
        assert key in summary


def test_acceptance_summary_of_a_split_without_healthy_images(tmp_path):
    datalist = write_phantom_dataset(tmp_path / "phantoms", kind="mammo", n=10, size=32, seed=0)
    lists = json.loads(datalist.read_text())
    lists["test"] = [item for item in lists["test"] if item["label"] == 1]
    lesions_only = datalist.parent / "lesions_only.json"
    lesions_only.write_text(json.dumps(lists))
    explainer, _ = _explainer()
    summary = acceptance_summary(explainer, lesions_only, "test", (32, 32), delta=0.6, randomization_images=0)
    assert summary["images"] == summary["lesion_images"] == 1
    assert summary["mean_area_healthy_images"] is None and "healthy_to_lesion_area" not in summary


def test_the_lesion_hull_reference_uses_the_attributors_mapping_into_s(tmp_path):
    """The oracle maps the lesion into S with the attributor's own σ and smoothing, not the defaults."""
    datalist = write_phantom_dataset(tmp_path / "phantoms", kind="mammo", n=10, size=32, seed=0)
    attributor = CountingAttributor()
    seen = []
    attributor.compact = lambda mask: seen.append(mask) or torch.ones_like(mask)  # the whole image: nothing to flip
    explainer = CounterfactualExplainer(attributor, Brightness(0.0), get_marginalizer("mean"))
    summary = acceptance_summary(explainer, datalist, "test", (32, 32), threshold=0.5, randomization_images=0)
    assert len(seen) == 1 and seen[0].shape[0] == summary["flagged_with_lesion_mask"] == 1
    assert set(seen[0].unique().tolist()) == {0.0, 1.0}  # the lesion mask itself went in


@pytest.mark.parametrize("lesion_mask", [True, False])
def test_lesion_figures_count_only_images_with_a_lesion_mask(tmp_path, lesion_mask):
    """A pathological image without lesion ground truth (chest X-ray data sets) is neither hit nor missed."""
    datalist = write_phantom_dataset(tmp_path / "phantoms", kind="mammo", n=10, size=32, seed=0)
    lists = json.loads(datalist.read_text())
    for item in lists["test"]:
        if item["label"] == 1 and not lesion_mask:
            del item["lesion"]
    edited = datalist.parent / "edited.json"
    edited.write_text(json.dumps(lists))
    explainer = CounterfactualExplainer(CountingAttributor(), Brightness(0.0), get_marginalizer("mean"))
    summary = acceptance_summary(explainer, edited, "test", (32, 32), threshold=0.5, randomization_images=0)
    assert summary["flagged_lesion_images"] == 1 and summary["flipped"] is not None
    assert summary["flagged_with_lesion_mask"] == int(lesion_mask)
    assert (summary["lesion_hit"] is None, summary["oracle_flipped"] is None) == (not lesion_mask, not lesion_mask)


class Brightness(nn.Module):
    """Logit = total brightness − ``level``: a lesion (bright) raises it, its removal lowers it."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, images):
        return images.flatten(1).sum(dim=1, keepdim=True) - self.level


@pytest.mark.parametrize(
    "level,phantoms_json,expected",
    [
        ("between", True, 1.0),  # the lesion image is flagged, its twin is not: removing the lesion flips it
        ("below_twin", True, 0.0),  # the twin is flagged too: its anatomy, not its lesion, flags it
        ("between", False, None),  # no phantoms.json: no twins, no reference
    ],
)
def test_acceptance_summary_twin_reference(tmp_path, level, phantoms_json, expected):
    from cfattr_monai.data.phantoms import write_healthy_twins
    from cfattr_monai.metrics.marginalization import load_split

    datalist = write_phantom_dataset(tmp_path / "phantoms", kind="mammo", n=10, size=32, seed=0)
    data = load_split(datalist, "test", (32, 32))
    twins = load_split(write_healthy_twins(datalist, "test", tmp_path / "twins"), "test", (32, 32))
    lesion = data["label"] == 1
    assert int(lesion.sum()) == 1
    sick, healthy = float(data["image"][lesion].sum()), float(twins["image"][lesion].sum())
    assert sick > healthy + 1.0
    classifier = Brightness((sick + healthy) / 2 if level == "between" else healthy - 1.0)
    if not phantoms_json:
        (datalist.parent / "phantoms.json").unlink()
    explainer = CounterfactualExplainer(CountingAttributor(), classifier, get_marginalizer("mean"))
    summary = acceptance_summary(explainer, datalist, "test", (32, 32), threshold=0.5, randomization_images=0)
    assert summary["flagged_lesion_images"] == 1
    assert summary.get("twin_flipped") == expected
    if expected:
        assert summary["flipped_where_twin_flips"] == summary["flipped"]
    else:
        assert summary.get("flipped_where_twin_flips") is None


@pytest.mark.parametrize("theta,expected,delta", [(0.93, 0.93, 0.06), (None, 0.5, None)])
def test_fingerprint_records_the_operating_threshold_and_delta(tmp_path, theta, expected, delta):
    from cfattr_monai.explain.counterfactual import (
        read_classification_threshold,
        read_recorded,
        write_classifier_fingerprint,
    )

    write_classifier_fingerprint(torch.nn.Linear(2, 1), tmp_path, theta, delta)
    assert read_classification_threshold(tmp_path) == pytest.approx(expected)
    assert read_classification_threshold(tmp_path / "absent") == 0.5
    assert read_recorded(tmp_path, "delta") == delta
    assert read_recorded(tmp_path / "absent", "delta", 0.1) == 0.1


class _BrightIsPathological(torch.nn.Module):
    def forward(self, x):
        return 40.0 * (x.flatten(1).mean(dim=1, keepdim=True) - 0.5)


@pytest.mark.parametrize(
    "levels, threshold, expected",
    [([0.9, 0.1, 0.8], 0.5, [0, 2]), ([0.9, 0.9], 0.5, [0, 1]), ([0.6, 0.7], 0.99, [1]), ([0.1, 0.2], 0.5, None)],
)
def test_flagged_items(levels, threshold, expected):
    from monai.data import Dataset

    from cfattr_monai.explain.counterfactual import flagged_items

    data = [{"image": torch.full((1, 4, 4), level), "id": i} for i, level in enumerate(levels)]
    if expected is None:
        with pytest.raises(ValueError, match="flags none"):
            flagged_items(_BrightIsPathological(), Dataset(data), threshold)
    else:
        assert [item["id"] for item in flagged_items(_BrightIsPathological(), Dataset(data), threshold)] == expected
