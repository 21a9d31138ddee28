"""Baselines on tiny models: Grad-CAM, saliency (MONAI and batched), the iterative counterfactual method."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, resnet18
from torch import nn

from cfattr_monai.explain.baselines import (
    GradCAMBaseline,
    IterativeCounterfactual,
    SaliencyBaseline,
    gradcam_head_only,
    gradcam_target_layer,
    saliency_batched,
)
from cfattr_monai.losses.attribution import CounterfactualLoss
from cfattr_monai.networks.mobilenet import MobileNetV1


def tiny_mobilenet(frozen: bool) -> nn.Module:
    torch.manual_seed(0)
    net = MobileNetV1(width_mult=0.25).eval()
    return net.requires_grad_(not frozen)


GRAD_CONTEXTS = {"grad": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
METHODS = {
    "gradcam": lambda net: GradCAMBaseline(net),
    "gradcam_head_only": lambda net: lambda x: gradcam_head_only(net, x),
    "saliency": lambda net: SaliencyBaseline(net),
    "saliency_batched": lambda net: lambda x: saliency_batched(net, x),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("context", GRAD_CONTEXTS)
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trainable"])
def test_maps_have_image_shape_are_finite_and_leave_the_classifier_alone(method, context, frozen):
    net = tiny_mobilenet(frozen)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with GRAD_CONTEXTS[context]():
        images = torch.rand(3, 1, 64, 48)
        maps = METHODS[method](net)(images)
    assert maps.shape == (3, 1, 64, 48)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert not maps.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class TwoLogits(MobileNetV1):
    """The tiny MobileNet with two logits (healthy, pathology) whose log-odds z1 − z0 is the one-logit net's z; the
    healthy logit z0 reads the pixels directly, so explaining z0 or z1 alone gives other maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        z0 = 5.0 * x.flatten(1).mean(dim=1, keepdim=True)
        return torch.cat([z0, z + z0], dim=1)


@pytest.mark.parametrize("method", METHODS)
def test_a_two_logit_classifier_is_explained_by_its_pathology_log_odds(method):
    one = tiny_mobilenet(frozen=True)
    two = TwoLogits(width_mult=0.25).eval().requires_grad_(False)
    two.load_state_dict(one.state_dict())
    images = torch.rand(2, 1, 64, 48)
    assert torch.allclose(METHODS[method](two)(images), METHODS[method](one)(images), atol=1e-5)
    assert not two._forward_hooks  # the output is read as log-odds only during the call
    assert two(images).shape == (2, 2)


def test_batched_saliency_computes_no_weight_gradients():
    net = tiny_mobilenet(frozen=False)
    saliency_batched(net, torch.rand(2, 1, 64, 64))
    assert all(p.grad is None for p in net.parameters())


def test_saliency_of_a_linear_classifier_is_its_weight_magnitude():
    linear = nn.Linear(16, 1)
    net = nn.Sequential(nn.Flatten(), linear).eval()
    expected = linear.weight.detach().abs().reshape(1, 1, 4, 4)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    images = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(saliency_batched(net, images), expected.expand(2, -1, -1, -1))
    torch.testing.assert_close(SaliencyBaseline(net)(images), expected.expand(2, -1, -1, -1))


def test_batched_saliency_equals_monai_vanillagrad_image_by_image():
    net = tiny_mobilenet(frozen=True)
    images = torch.rand(4, 1, 64, 64)
    torch.testing.assert_close(saliency_batched(net, images), SaliencyBaseline(net)(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trainable"])
@pytest.mark.parametrize(
    "build,size",
    [
        (lambda: MobileNetV1(width_mult=0.25), (64, 48)),
        (lambda: DenseNet121(spatial_dims=2, in_channels=1, out_channels=1, init_features=8, growth_rate=4), (64, 64)),
        (lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=1, init_features=4, growth_rate=2),
         (32, 32, 32)),
        (lambda: resnet18(spatial_dims=2, n_input_channels=1, num_classes=1), (64, 64)),
        (lambda: EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=1),
         (64, 64)),
    ],
    ids=["mobilenet_v1", "densenet121", "densenet121_3d", "resnet18", "efficientnet_b0"],
)
def test_head_only_gradcam_equals_monai_gradcam_and_computes_no_weight_gradients(build, size, frozen):
    torch.manual_seed(0)
    net = build().eval().requires_grad_(not frozen)
    images = torch.rand(3, 1, *size)
    expected = GradCAMBaseline(copy.deepcopy(net))(images)
    torch.testing.assert_close(gradcam_head_only(net, images), expected, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())


def test_gradcam_follows_the_pathology_evidence():
    """A net whose logit is the mean of a ReLU feature map: Grad-CAM is that (upsampled, normalized) map."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    nn.init.ones_(net[0].weight)
    images = torch.zeros(1, 1, 8, 8)
    images[..., 2:4, 5:7] = 1.0
    maps = GradCAMBaseline(net, target_layer="1")(images)
    assert maps[0, 0, 2:4, 5:7].min() == 1.0 and maps[0, 0].sum() == 4.0


@pytest.mark.parametrize(
    "net,expected",
    [
        (MobileNetV1(width_mult=0.25), "features.block13.pointwise.adn.A"),
        (DenseNet121(spatial_dims=2, in_channels=1, out_channels=1), "class_layers.relu"),
    ],
)
def test_gradcam_target_layer_is_the_coarsest_activation(net, expected):
    assert gradcam_target_layer(net) == expected
    assert expected in dict(net.named_modules())


def test_gradcam_rejects_unknown_backbones_and_layers():
    with pytest.raises(TypeError, match="target_layer="):
        gradcam_target_layer(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(ValueError, match="not a module"):
        GradCAMBaseline(tiny_mobilenet(True), target_layer="features.nope")
    with pytest.raises(ValueError, match="not a module"):
        gradcam_head_only(tiny_mobilenet(True), torch.rand(1, 1, 32, 32), target_layer="features.nope")


class BlobDetector(nn.Module):
    """Logit > 0 exactly when an 8×8 window is on average brighter than 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (nn.functional.avg_pool2d(x, 8).amax(dim=(2, 3)) - 0.5) * 20


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """π with the structure of the project's marginalizers: the fill F differs from I only in the hard hole."""
    fill = torch.where(mask > 0.55, 0.2, image).detach()
    return (1 - mask) * image + mask * fill


def blob_image() -> torch.Tensor:
    image = torch.full((1, 1, 32, 32), 0.2)
    image[..., 8:16, 18:26] = 1.0
    return image


def test_iterative_counterfactual_finds_the_blob_and_stops_on_its_criterion():
    loss = CounterfactualLoss(BlobDetector(), mean_fill, delta=0.1, what_if_block=None)
    method = IterativeCounterfactual(loss, max_iterations=300, grid_stride=2)
    with torch.no_grad():
        maps = method(blob_image())
    run = method.last_runs[0]
    assert run["converged"] and run["iterations"] < 300 and run["p_counterfactual"] < 0.5
    binary = maps[0, 0] > 0.55
    assert binary[8:16, 18:26].any() and binary.float().mean() <= 0.15
    assert binary[:, :12].sum() == 0  # nothing far away from the blob


def test_iterative_counterfactual_stops_at_the_budget():
    method = IterativeCounterfactual(CounterfactualLoss(BlobDetector(), mean_fill, delta=0.1, what_if_block=None), max_iterations=3)
    maps = method(torch.cat([blob_image(), blob_image()]))
    assert maps.shape == (2, 1, 32, 32)
    assert [run["iterations"] for run in method.last_runs] == [3, 3]
    assert not any(run["converged"] for run in method.last_runs)


class ImageScoring(CounterfactualLoss):
    """The loss scoring the image itself in every step, as before the iterative method passed p(c|I)'s logits."""

    def terms(self, mask, target, image_logits=None):
        return super().terms(mask, target)


def test_iterative_counterfactual_scores_each_image_once():
    """p(c|I) is constant while M is optimized: one classifier pass over each image, the same maps and runs."""
    images, classifier = torch.cat([blob_image(), 0.5 * blob_image()]), BlobDetector()
    calls = []
    classifier.register_forward_hook(lambda module, args, output: calls.append(args[0]))
    runs = {}
    for name, loss_class in (("once", CounterfactualLoss), ("every step", ImageScoring)):
        method = IterativeCounterfactual(loss_class(classifier, mean_fill, delta=0.1, what_if_block=None), max_iterations=20)
        calls.clear()
        runs[name] = method(images), method.last_runs
        image_passes = sum(len(x) == 1 and any(torch.equal(x, image[None]) for image in images) for x in calls)
        steps = sum(run["iterations"] for run in method.last_runs)
        assert image_passes == 2 if name == "once" else image_passes > steps  # and each flip check scores it too
    assert torch.equal(runs["once"][0], runs["every step"][0]) and runs["once"][1] == runs["every step"][1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_iterations": 0},
        {"patience": 0},
        {"grid_stride": 0},
        {"search_batch": 0},
        {"learning_rate": 0.0},
        {"tol": -1.0},
        {"start_high": 0.5},
        {"start_low": 0.0},
    ],
)
def test_iterative_counterfactual_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="IterativeCounterfactual"):
        IterativeCounterfactual(CounterfactualLoss(BlobDetector(), mean_fill, delta=0.1, what_if_block=None), **kwargs)
