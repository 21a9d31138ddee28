"""PCILoss: each term against hand-computed values, weights, feature extractors, missing classifier checkpoint."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from cfattr_monai.losses.inpainting import (
    PCILoss,
    classifier_feature_extractor,
    frozen_feature_extractor,
    gram_matrix,
    hole_loss,
    perceptual_loss,
    style_loss,
    total_variation_loss,
    valid_loss,
)


def pair(size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = torch.zeros(1, 1, size, size)
    valid = torch.ones(1, 1, size, size)
    valid[..., 2:4, 2:4] = 0  # a 2×2 hole
    return torch.ones(1, 1, size, size), target, valid


def test_valid_and_hole_terms_are_l1_normalized_by_image_size():
    output, target, valid = pair()
    assert valid_loss(output, target, valid).item() == pytest.approx(60 / 64)
    assert hole_loss(output, target, valid).item() == pytest.approx(4 / 64)


def test_gram_matrix_is_normalized_by_chw():
    features = torch.ones(2, 3, 4, 5)
    torch.testing.assert_close(gram_matrix(features), torch.full((2, 3, 3), 20 / 60))


def test_perceptual_and_style_use_output_and_composite():
    gt = [torch.zeros(1, 2, 4, 4)]
    out = [torch.ones(1, 2, 4, 4)]
    comp = [torch.zeros(1, 2, 4, 4)]
    assert perceptual_loss(out, comp, gt).item() == pytest.approx(1.0)  # only the output differs, mean |1 - 0|
    assert perceptual_loss(out, out, gt).item() == pytest.approx(2.0)
    # Gram of ones: (1/(C·H·W))·H·W = 1/2 per entry; L1 mean over the C×C entries
    assert style_loss(out, comp, gt).item() == pytest.approx(0.5)


def test_total_variation_only_on_the_dilated_hole():
    comp = torch.zeros(1, 1, 8, 8)
    valid = torch.ones(1, 1, 8, 8)
    valid[..., 3, 3] = 0  # one-pixel hole → 3×3 region P around it
    comp[..., 3, 3] = 1.0
    # inside P the centre differs from its 4 neighbours: 2 horizontal + 2 vertical pairs, /N_I
    assert total_variation_loss(comp, valid).item() == pytest.approx(4 / 64)
    far = torch.zeros(1, 1, 8, 8)
    far[..., 7, 7] = 1.0  # an edge outside P costs nothing
    assert total_variation_loss(far, valid).item() == 0.0


def test_pci_loss_weights_match_the_paper():
    loss = PCILoss(feature_extractor=nn.Conv2d(1, 2, 3))
    assert loss.lambdas == {"valid": 1.0, "hole": 6.0, "perc": 0.05, "style": 120.0, "tv": 0.1}
    output, target, valid = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), pair()[2].expand(2, 1, 8, 8)
    terms = loss.terms(output, target, valid)
    expected = sum(loss.lambdas[k] * v for k, v in terms.items())
    torch.testing.assert_close(loss(output, target, valid), expected)
    assert set(terms) == {"valid", "hole", "perc", "style", "tv"}


def test_without_extractor_only_pixel_terms():
    output, target, valid = pair()
    assert set(PCILoss(None).terms(output, target, valid)) == {"valid", "hole", "tv"}


def test_extractor_is_frozen_and_gradients_reach_the_prediction():
    extractor = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    loss = PCILoss(extractor).train()
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    prediction = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss(prediction, torch.rand(2, 1, 8, 8), pair()[2].expand(2, 1, 8, 8)).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_local_weights_are_loaded_and_missing_weights_are_a_clear_error(tmp_path):
    source = nn.Conv2d(1, 2, 3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = frozen_feature_extractor(nn.Conv2d(1, 2, 3), tmp_path / "w.pt")
    torch.testing.assert_close(loaded.weight, source.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        frozen_feature_extractor(nn.Conv2d(1, 2, 3), tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "with_configs,fragment",
    [(True, r"models/model\.pt does not exist; train it first"), (False, r"configs/inference\.json not found")],
)
def test_missing_classifier_checkpoint_is_a_clear_error(tmp_path, repo_root, with_configs, fragment):
    if with_configs:
        shutil.copytree(repo_root / "bundles" / "classifier" / "configs", tmp_path / "classifier" / "configs")
    with pytest.raises(FileNotFoundError, match=fragment):
        classifier_feature_extractor(tmp_path / "classifier")


def test_mismatched_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="share batch and spatial size"):
        PCILoss(None)(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 6), torch.ones(1, 1, 8, 6))
