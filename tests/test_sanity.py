"""Randomization sanity checks: similarity measures, both randomizations, and a small trained model."""

from __future__ import annotations

import pytest
import torch

from cfattr_monai.metrics.sanity import (
    cascading_randomized_attributors,
    randomization_check,
    reinitialized_attributor,
    spearman_similarity,
    ssim_similarity,
)
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.mobilenet import MobileNetV1


def _square(size: int = 32, at: int = 8) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., at : at + 8, at : at + 8] = 1.0
    return m


@pytest.mark.parametrize(
    "other, expected, expected_abs",
    [
        (lambda m: m.clone(), 1.0, 1.0),
        (lambda m: 1.0 - m, -1.0, 1.0),  # inverted: as structured as the map, low only while ρ keeps its sign
        (lambda m: torch.zeros_like(m), 0.0, 0.0),
        (lambda m: torch.cat([m[:1], 1.0 - m[1:]]), 0.0, 1.0),  # one image +1, one −1: the signed mean cancels
    ],
)
def test_spearman_similarity(other, expected, expected_abs):
    maps = (_square() + 0.01 * torch.arange(32.0 * 32).reshape(1, 1, 32, 32) / 1024).repeat(2, 1, 1, 1)
    assert spearman_similarity(maps, other(maps)) == pytest.approx(expected, abs=1e-6)
    assert spearman_similarity(maps, other(maps), absolute=True) == pytest.approx(expected_abs, abs=1e-6)


def test_ssim_identical_is_one_and_different_is_lower():
    maps = _square()
    assert ssim_similarity(maps, maps) == pytest.approx(1.0, abs=1e-5)
    assert ssim_similarity(maps, _square(at=20)) < 0.5


@pytest.mark.parametrize(
    "region_rows, inside",
    [
        (slice(0, 16), 1.0),  # equal in the top half, reversed in the bottom half: only the region counts
        (slice(16, 32), -1.0),
        (slice(0, 32), None),  # the whole image as the region: the plain ρ
        (slice(0, 0), 0.0),  # an empty region has no ranks: ρ = 0
    ],
)
def test_spearman_similarity_in_a_region(region_rows, inside):
    maps = torch.arange(32.0 * 32).reshape(1, 1, 32, 32)
    other = maps.clone()
    other[..., 16:, :] = -maps[..., 16:, :]
    region = torch.zeros_like(maps)
    region[..., region_rows, :] = 1.0
    plain = spearman_similarity(maps, other)
    assert -0.99 < plain < 0.99
    expected = plain if inside is None else inside
    assert spearman_similarity(maps, other, region) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("fn", [spearman_similarity, ssim_similarity])
def test_shape_mismatch_is_rejected(fn):
    with pytest.raises(ValueError, match=f"{fn.__name__}: .*shape"):
        fn(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_region_of_another_shape_is_rejected():
    with pytest.raises(ValueError, match="one shape"):
        spearman_similarity(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 9))


def test_reinitialized_attributor_changes_only_trainable_weights():
    net = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
    clone = reinitialized_attributor(net)
    for (name, p), q in zip(net.named_parameters(), clone.parameters()):
        if name.endswith("weight"):  # biases are 0 before and after
            assert torch.equal(p, q) != p.requires_grad, name


def test_cascading_randomization_reaches_every_layer_and_keeps_the_original():
    classifier = MobileNetV1(width_mult=0.25)
    with torch.no_grad():  # stand-in for training: no weight equals its initial value
        for parameter in classifier.parameters():
            parameter.add_(torch.rand_like(parameter) + 0.1)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    net = AttentionGatedUNet(classifier)
    stages = list(cascading_randomized_attributors(net, steps=3))
    assert len(stages) == 3
    last = stages[-1][1]
    # the last copy has every classifier weight re-drawn, its encoder shares them, its decoder is the trained one
    changed = [not torch.equal(v, before[k]) for k, v in last.classifier.state_dict().items() if k.endswith("weight")]
    assert all(changed)
    assert last.encoder is not net.encoder and torch.equal(last.head.weight, net.head.weight)
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_randomization_check_on_a_small_trained_attributor():
    """Train the decoder to mark a dark quadrant (not what raw feature energy shows); randomized maps lose it."""
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32) * 0.2
    images[..., :16, :16] += 0.8
    target = torch.zeros(2, 1, 32, 32)
    target[..., 16:, 16:] = 1.0
    net = AttentionGatedUNet(MobileNetV1(width_mult=0.25), init_std=0.1)
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy(net(images).clamp(1e-4, 1 - 1e-4), target).backward()
        optimizer.step()
    result = randomization_check(net, images, steps=2, draws=3, region=target)
    # a 15-step toy model does not reach the < 0.2 acceptance level (measured on the demo: docs/README.md); here the
    # check must see that both randomizations change the trained maps and report bounded similarities
    assert result["attributor"]["spearman"] < 0.9 and result["classifier"]["spearman"] < 0.9
    assert all(-1.0 <= step["spearman"] <= 1.0 for step in result["cascading"])
    draws = result["attributor"]["spearman_draws"]
    assert len(draws) == 3 and len(set(draws)) == 3  # three different re-initializations
    assert result["attributor"]["spearman"] == pytest.approx(sum(draws) / 3)
    assert -1.0 <= result["attributor"]["spearman_between_draws"] <= 1.0
    assert len(result["cascading"]) == 2 and result["classifier"] == {
        k: result["cascading"][-1][k] for k in ("spearman", "ssim", "spearman_abs", "spearman_region")
    }
    assert all(abs(r["spearman"]) <= r["spearman_abs"] <= 1.0 for r in (result["attributor"], *result["cascading"]))
    assert all(-1.0 <= r["spearman_region"] <= 1.0 for r in (result["attributor"], *result["cascading"]))


class _FixedMapAttributor(torch.nn.Module):
    """Stub whose re-initialization changes nothing: every draw gives the trained map again."""

    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Conv2d(1, 1, 1)  # what the cascading randomization re-initializes

    def forward(self, images):
        return images.mean(dim=1, keepdim=True)

    def reset_parameters(self):
        pass


@pytest.mark.parametrize("draws,between", [(1, None), (2, 1.0), (4, 1.0)])
def test_between_draws_reference_level(draws, between):
    torch.manual_seed(0)
    result = randomization_check(_FixedMapAttributor(), torch.rand(2, 1, 32, 32), steps=1, draws=draws)
    assert result["attributor"].get("spearman_between_draws") == (between and pytest.approx(between))
