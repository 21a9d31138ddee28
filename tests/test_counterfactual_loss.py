"""CounterfactualLoss: direction, area penalty, finiteness, flagged/healthy handling, δ helper, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cfattr_monai.transforms.marginalize import Marginalizer
from cfattr_monai.losses.attribution import (
    CounterfactualLoss,
    area_penalty,
    generalized_logistic,
    mean_lesion_fraction,
    phi,
    psi,
    weighted_total_variation,
    what_if_fill,
)


class MeanIntensityClassifier(nn.Module):
    """Logit = scale · (mean intensity − 0.5): bright images are 'pathological'."""

    def __init__(self, scale: float = 40.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * (x.flatten(1).mean(dim=1, keepdim=True) - 0.5)


def darken(image, mask):
    """π(M) = (1 − M) ⊙ I: the marginalized region becomes black (healthy for this classifier)."""
    return (1 - mask) * image


@pytest.mark.parametrize("image_logit", [0.0, 3.0])
def test_phi_and_psi_fall_as_counterfactual_probability_falls(image_logit):
    counterfactual_logits = torch.tensor([6.0, 2.0, 0.0, -2.0, -6.0])
    for term in (phi(counterfactual_logits), psi(counterfactual_logits, torch.tensor(image_logit))):
        assert bool((term[1:] < term[:-1]).all())


def test_phi_psi_finite_for_extreme_logits():
    logits = torch.tensor([-1e4, 0.0, 1e4])
    assert torch.isfinite(phi(logits)).all() and torch.isfinite(psi(logits, -logits)).all()


def test_loss_falls_as_counterfactual_probability_falls():
    torch.manual_seed(0)
    image = torch.full((1, 1, 32, 32), 0.6)  # p(c|I) = σ(4) ≈ 0.98: flagged
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, delta=1.0, tv_weight=0.0, area_weight=0.0)
    values, probabilities = [], []
    for size in (0, 4, 8, 12):  # larger darkened square → lower p(c|π(M))
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :size, :size] = 1.0
        values.append(float(loss(mask, image)))
        probabilities.append(float(loss.terms(mask, image)["p_counterfactual"]))
    assert probabilities == sorted(probabilities, reverse=True)
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_gradient_lowers_counterfactual_probability():
    image = torch.full((1, 1, 16, 16), 0.6)
    mask = torch.full((1, 1, 16, 16), 0.1, requires_grad=True)
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, delta=1.0, tv_weight=0.0, area_weight=0.0)
    loss(mask, image).backward()
    assert bool((mask.grad < 0).all()), "descending the loss must grow the darkened (marginalized) region"


@pytest.mark.parametrize(
    "area_value, delta, expected",
    [(0.0, 0.1, 0.0), (0.05, 0.1, 0.0), (0.1, 0.1, 0.0), (0.2, 0.1, 0.01), (0.3, 0.1, 0.04), (0.5, 0.0, 0.25)],
)
def test_area_penalty_zero_below_delta_growing_above(area_value, delta, expected):
    assert float(area_penalty(torch.tensor(area_value), delta)) == pytest.approx(expected, abs=1e-7)


def test_unflagged_images_only_pay_for_area():
    image = torch.full((1, 1, 16, 16), 0.4)  # p(c|I) = σ(−4): not flagged, δ = 0 for it
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, delta=0.5, tv_weight=0.0, area_weight=1.0)
    terms = loss.terms(torch.zeros(1, 1, 16, 16), image)
    assert float(terms["flagged"]) == 0.0 and float(terms["delta"]) == 0.0
    assert float(loss(torch.zeros(1, 1, 16, 16), image)) == 0.0
    assert float(loss(torch.full((1, 1, 16, 16), 0.5), image)) > 0.0


def test_delta_of_organ_uses_the_organ_area():
    image = torch.full((1, 1, 16, 16), 0.6)
    organ = torch.zeros(1, 1, 16, 16)
    organ[..., :8, :] = 1.0  # half the image
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :4, :] = 1.0  # a quarter of the image = half the organ
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, delta=0.4, delta_of="organ")
    assert float(loss.terms(mask, torch.cat([image, organ], dim=1))["area"]) == pytest.approx(0.5)


@pytest.mark.parametrize("rows, inside", [((2, 6), True), ((10, 14), False)])
def test_with_an_organ_mask_pi_replaces_tissue_only_and_d_counts_the_whole_map(rows, inside):
    image, organ = torch.full((1, 1, 16, 16), 0.6), torch.zeros(1, 1, 16, 16)
    organ[..., :8, :] = 1.0
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., slice(*rows), 2:6] = 1.0
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, delta=0.5)
    terms = loss.terms(mask, torch.cat([image, organ], dim=1))
    plain = loss.terms(mask, image)  # no organ mask: π sees the whole map
    assert float(terms["area"]) == pytest.approx(16 / 256) == pytest.approx(float(plain["area"]))
    assert float(plain["p_counterfactual"]) < float(plain["p"])
    if inside:
        assert float(terms["p_counterfactual"]) == pytest.approx(float(plain["p_counterfactual"]))
    else:  # the map covers no tissue: π(M) = I
        assert float(terms["p_counterfactual"]) == pytest.approx(float(terms["p"]))


def test_weighted_total_variation_is_cheaper_on_image_edges():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1.0
    flat = torch.zeros(1, 1, 8, 8)
    edge = mask.clone()  # the image has an edge where the mask jumps
    assert float(weighted_total_variation(mask, edge)) < float(weighted_total_variation(mask, flat))
    assert float(weighted_total_variation(torch.ones(1, 1, 8, 8), flat)) == 0.0


@pytest.mark.parametrize(
    "kwargs, t, expected",
    [({}, 0.0, 0.5), ({"lower": -1.0, "upper": 3.0}, 0.0, 1.0), ({"shift": 2.0}, 2.0, 0.5), ({"growth": 5.0}, 100.0, 1.0)],
)
def test_generalized_logistic(kwargs, t, expected):
    assert float(generalized_logistic(torch.tensor(t), **kwargs)) == pytest.approx(expected, abs=1e-6)


def test_mean_lesion_fraction(tmp_path):
    (tmp_path / "l").mkdir()
    for name, pixels in (("a", 16), ("b", 48)):
        lesion = np.zeros((16, 16), np.uint8)
        lesion.flat[:pixels] = 255
        Image.fromarray(lesion).save(tmp_path / "l" / f"{name}.png")
    items = [
        {"image": "l/a.png", "label": 1, "lesion": "l/a.png"},
        {"image": "l/b.png", "label": 1, "lesion": "l/b.png"},
        {"image": "l/a.png", "label": 0},
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    assert mean_lesion_fraction(tmp_path / "datalist.json") == pytest.approx((16 + 48) / 2 / 256)
    with pytest.raises(FileNotFoundError):
        mean_lesion_fraction(tmp_path / "missing.json")
    (tmp_path / "healthy.json").write_text(json.dumps({"training": items[2:]}))
    with pytest.raises(ValueError, match="no pathological item"):
        mean_lesion_fraction(tmp_path / "healthy.json")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "l" / "empty.png")
    empty = [{"image": "l/a.png", "label": 1, "lesion": "l/empty.png"}]
    (tmp_path / "empty.json").write_text(json.dumps({"training": empty}))
    with pytest.raises(ValueError, match="all empty.*--delta"):
        mean_lesion_fraction(tmp_path / "empty.json")


@pytest.mark.parametrize(
    "kwargs, mask_shape, target_shape, message",
    [
        ({"delta": 0.0}, (1, 1, 8, 8), (1, 1, 8, 8), "delta is an area fraction in \\(0, 1\\]"),
        ({"delta": 0.1, "delta_of": "breast"}, (1, 1, 8, 8), (1, 1, 8, 8), "delta_of must be 'image' or 'organ'"),
        ({"delta": 0.1, "threshold": 1.0}, (1, 1, 8, 8), (1, 1, 8, 8), "threshold θ must be in \\(0, 1\\)"),
        ({"delta": 0.1}, (1, 2, 8, 8), (1, 1, 8, 8), "the map must be \\(B, 1, H, W\\)"),
        ({"delta": 0.1}, (1, 1, 8, 8), (1, 1, 4, 4), "target must be \\(B, 1 or 2, H, W\\)"),
        ({"delta": 0.1, "delta_of": "organ"}, (1, 1, 8, 8), (1, 1, 8, 8), "target must be \\(B, 2, H, W\\)"),
        ({"delta": 0.1, "blend_temperature": 0.0}, (1, 1, 8, 8), (1, 1, 8, 8), "blend_temperature must be > 0"),
        ({"delta": 0.1, "blend_margin": -0.1}, (1, 1, 8, 8), (1, 1, 8, 8), "blend_margin must be >= 0"),
        ({"delta": 0.1}, (1, 1, 8, 8), (1, 3, 8, 8), "target must be \\(B, 1 or 2, H, W\\)"),
    ],
)
def test_bad_arguments(kwargs, mask_shape, target_shape, message):
    with pytest.raises(ValueError, match=f"CounterfactualLoss: {message}"):
        CounterfactualLoss(MeanIntensityClassifier(), darken, what_if_block=None, **kwargs)(torch.rand(mask_shape), torch.rand(target_shape))


class CountingClassifier(MeanIntensityClassifier):
    """The mean-intensity classifier, counting its calls."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("organ", [False, True])
def test_image_logits_given_with_the_map_replace_the_classifier_pass_over_the_image(outputs, organ):
    """(M, logits) as the attributor's trainer passes them: the same loss and gradient, one classifier call fewer."""
    torch.manual_seed(0)
    image = torch.rand(3, 1, 16, 16) * 0.4 + 0.4
    target = torch.cat([image, (torch.rand_like(image) > 0.2).float()], 1) if organ else image
    classifier = CountingClassifier()
    with torch.no_grad():
        logits = classifier(image)
    logits = torch.cat([torch.zeros_like(logits), logits], 1) if outputs == 2 else logits
    loss = CounterfactualLoss(classifier, darken, delta=0.1, what_if_block=None, delta_of="organ" if organ else "image")
    values, grads, calls = [], [], []
    for prediction in ("map", "pair", "pair without logits"):
        mask = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        classifier.calls = 0
        value = loss({"map": mask, "pair": (mask, logits), "pair without logits": (mask, None)}[prediction], target)
        value.backward()
        values.append(value.detach()), grads.append(mask.grad), calls.append(classifier.calls)
    assert torch.equal(values[0], values[1]) and torch.equal(values[0], values[2])
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
    assert calls == [2, 1, 2]


@pytest.mark.parametrize(
    "prediction, message",
    [
        (lambda m: (m, torch.zeros(2, 1), torch.zeros(2, 1)), "expected the map or the pair \\(map, image logits\\), got 3"),
        (lambda m: (m,), "expected the map or the pair \\(map, image logits\\), got 1"),
        (lambda m: (m, torch.zeros(3, 1)), "the image logits must be the classifier's output for the map's 2 images"),
    ],
)
def test_bad_map_and_logits_pairs(prediction, message):
    loss = CounterfactualLoss(MeanIntensityClassifier(), darken, delta=0.1, what_if_block=None)
    with pytest.raises(ValueError, match=f"CounterfactualLoss: {message}"):
        loss(prediction(torch.rand(2, 1, 8, 8)), torch.rand(2, 1, 8, 8))


class DarkMarginalizer(Marginalizer):
    """Fill = 0 (black) in the hole."""

    def fill(self, image, hole):
        return image * (1 - hole)


def test_what_if_fill_gives_gradient_outside_the_hard_hole():
    image = torch.full((1, 1, 16, 16), 0.6)
    mask = torch.zeros(1, 1, 16, 16, requires_grad=True)  # empty map: no hard hole anywhere
    plain = CounterfactualLoss(
        MeanIntensityClassifier(), DarkMarginalizer(), delta=1.0, what_if_block=None, tv_weight=0.0, area_weight=0.0
    )
    what_if = CounterfactualLoss(MeanIntensityClassifier(), DarkMarginalizer(), delta=1.0, tv_weight=0.0, area_weight=0.0)
    plain(mask, image).backward()
    assert float(mask.grad.abs().sum()) == pytest.approx(0.0, abs=1e-6)
    mask.grad = None
    what_if(mask, image).backward()
    assert bool((mask.grad < 0).all())


def test_what_if_fill_keeps_the_true_fill_inside_the_hole():
    image = torch.rand(1, 1, 16, 16)
    hole = torch.zeros(1, 1, 16, 16)
    hole[..., 2:6, 2:6] = 1.0
    calls = []
    fill = lambda i, h: calls.append(h.clone()) or torch.full_like(i, float(len(calls)))  # noqa: E731
    out = what_if_fill(fill, image, hole, block=4)
    assert len(calls) == 3 and bool((out[hole > 0] == 3.0).all())
    assert set(out[hole == 0].unique().tolist()) <= {1.0, 2.0}


def test_what_if_needs_a_marginalizer():
    with pytest.raises(TypeError, match="what_if_block needs a Marginalizer"):
        CounterfactualLoss(MeanIntensityClassifier(), darken, delta=0.1)


def test_what_if_fill_keeps_images_without_context_on_the_what_if_fill():
    image = torch.rand(2, 1, 8, 8)
    hole = torch.zeros(2, 1, 8, 8)
    hole[0] = 1.0  # all hole: nothing to inpaint from
    hole[1, :, :2, :2] = 1.0

    def fill(i, h):
        assert bool((h.flatten(1).amin(dim=1) == 0).all()), "fill called on an all-hole image"
        return torch.zeros_like(i)

    out = what_if_fill(fill, image, hole, block=2)
    assert out.shape == image.shape


@pytest.mark.parametrize("temperature", [0.1, 0.02])
def test_sharpened_blend_is_near_binary_at_the_threshold_and_differentiable(temperature):
    loss = CounterfactualLoss(
        MeanIntensityClassifier(), DarkMarginalizer(), delta=0.5, blend_temperature=temperature, blend_margin=0.0
    )
    blend = loss.blend(torch.tensor([0.0, 0.55, 1.0]).reshape(1, 1, 1, 3))
    assert blend[0, 0, 0, 0] < 0.01 and blend[0, 0, 0, 1] == 0.5 and blend[0, 0, 0, 2] > 0.98
    near = torch.tensor([0.5, 0.55, 0.6]).reshape(1, 1, 1, 3).requires_grad_(True)
    loss.blend(near).sum().backward()
    assert bool((near.grad > 0).all())


@pytest.mark.parametrize("margin", [0.05, 0.1, 0.2])
def test_blend_margin_moves_the_midpoint_above_the_map_threshold(margin):
    loss = CounterfactualLoss(MeanIntensityClassifier(), DarkMarginalizer(), delta=0.5, blend_margin=margin)
    blend = loss.blend(torch.tensor([0.55, 0.55 + margin]).reshape(1, 1, 1, 2))
    # a pixel at the threshold is in the hard hole but counts less than half: what flips π(B) flips π(M̂)
    assert blend[0, 0, 0, 0] < 0.5 and abs(float(blend[0, 0, 0, 1]) - 0.5) < 1e-5
    assert torch.allclose(blend[0, 0, 0, 0], torch.sigmoid(torch.tensor(-margin / 0.1)))


@pytest.mark.parametrize("kwargs", [{"blend_temperature": None}, {"what_if_block": None}])
def test_plain_blend_without_temperature_or_what_if_fill(kwargs):
    loss = CounterfactualLoss(MeanIntensityClassifier(), DarkMarginalizer(), delta=0.5, **kwargs)
    mask = torch.rand(1, 1, 4, 4)
    assert loss.blend(mask) is mask
