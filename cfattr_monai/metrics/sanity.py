"""Sanity checks for attribution maps by model randomization (Adebayo et al., NeurIPS 2018, the paper's ref. [2]).

A map that explains a trained model must change when the model's learned weights are destroyed. Two
randomizations of the attributor of :mod:`cfattr_monai.networks.attribution`:

* **attributor re-initialization**: the attribution network's trainable weights are drawn again from their
  random-normal initialization (the classifier is kept), ``draws`` times with seeds 0, 1, …; the similarity is the
  mean over the draws (one draw is a noisy estimate, see the attributor bundle's README), and the per-draw values
  are reported beside it, with the mean ρ between consecutive draws as a reference level;
* **cascading classifier randomization**: the explained classifier's layers are re-initialized one after the other,
  from the output layer down to the first convolution (cumulatively), while the attribution network keeps its
  trained weights; the maps are compared after each step.

Similarity between the trained maps and the randomized maps: Spearman rank correlation (scipy.stats.spearmanr) of
the flattened maps and SSIM (MONAI ``SSIMMetric``), averaged over images. **Lower is better**: the check passes
when the similarity is low (the paper's maps turn into "pure noise"); a map with no rank information (constant)
counts as correlation 0. The mean of ρ keeps its sign, so an inverted map (ρ = −1) or images whose correlations
cancel also score low; ``spearman_abs``, the mean of |ρ| (Adebayo et al. report both), is low only for noise.
With a ``region`` (the organ) ρ is also computed over the pixels inside it: outside the organ a map's values are
shaped by the network's architecture (the smooth-max window spreading the organ's values, the film label) whatever
its weights, so the in-organ ρ isolates what the trained weights decide.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from monai.metrics import SSIMMetric
from scipy.stats import spearmanr
from torch import nn

__all__ = [
    "spearman_similarity",
    "ssim_similarity",
    "reinitialized_attributor",
    "cascading_randomized_attributors",
    "randomization_check",
]


def _spearman_per_image(maps: torch.Tensor, other: torch.Tensor, region: torch.Tensor | None = None) -> np.ndarray:
    """Spearman's ρ per image between two batches of maps ``(B, 1, H, W)`` (constant maps: ρ = 0), over the pixels
    where ``region`` is > 0 when one is given."""
    if maps.shape != other.shape or (region is not None and region.shape != maps.shape):
        shapes = [tuple(t.shape) for t in (maps, other, region) if t is not None]
        raise ValueError(f"spearman_similarity: maps (and region) must have one shape, got {shapes}.")
    inside = (torch.ones_like(maps) if region is None else region > 0).flatten(1).cpu().numpy().astype(bool)
    values = []
    for a, b, keep in zip(maps.flatten(1).cpu().numpy(), other.flatten(1).cpu().numpy(), inside):
        a, b = a[keep], b[keep]
        values.append(0.0 if a.size < 2 or a.min() == a.max() or b.min() == b.max() else spearmanr(a, b).statistic)
    return np.asarray(values, float)


def spearman_similarity(
    maps: torch.Tensor, other: torch.Tensor, region: torch.Tensor | None = None, absolute: bool = False
) -> float:
    """Mean over images of Spearman's ρ between two batches of maps ``(B, 1, H, W)`` (constant maps: ρ = 0).

    ``region`` ``(B, 1, H, W)``, optional: rank only the pixels where it is > 0 (e.g. the organ), per image.
    ``absolute``: the mean of |ρ| instead (an inverted map is as structured as the map itself).
    """
    rho = _spearman_per_image(maps, other, region)
    return float(np.mean(np.abs(rho) if absolute else rho))


def ssim_similarity(maps: torch.Tensor, other: torch.Tensor) -> float:
    """Mean SSIM (data range 1) between two batches of maps ``(B, 1, H, W)`` in [0, 1]."""
    if maps.shape != other.shape:
        raise ValueError(f"ssim_similarity: map batches differ in shape, {tuple(maps.shape)} vs {tuple(other.shape)}.")
    return float(SSIMMetric(spatial_dims=2, data_range=1.0)(maps.float(), other.float()).mean())


def reinitialized_attributor(attributor: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``attributor`` with its trainable weights drawn again (its ``reset_parameters()``, seeded)."""
    clone = copy.deepcopy(attributor)
    torch.manual_seed(seed)
    clone.reset_parameters()
    return clone


def _layers_top_down(classifier: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with their own parameters and ``reset_parameters`` (convolutions, linear, norms), output first."""
    layers = [
        (name, module)
        for name, module in classifier.named_modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
    ]
    return layers[::-1]


def cascading_randomized_attributors(
    attributor: nn.Module, steps: int = 4, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(last layer randomized, attributor copy)`` with the classifier randomized from the top, cumulatively.

    The classifier's layers (output first) are split into ``steps`` consecutive groups; after re-initializing each
    group (and all groups above it) a copy of the attributor with its trained decoder is yielded. The last copy has
    every classifier layer randomized. ``attributor.classifier`` must be the module its encoder shares.
    """
    if steps < 1:
        raise ValueError(f"cascading_randomized_attributors: steps must be >= 1, got {steps}.")
    clone = copy.deepcopy(attributor)  # one deep copy keeps classifier and encoder sharing their modules
    layers = _layers_top_down(clone.classifier)
    if not layers:
        raise ValueError("cascading_randomized_attributors: the classifier has no layer with reset_parameters().")
    torch.manual_seed(seed)
    for group in np.array_split(np.arange(len(layers)), min(steps, len(layers))):
        with torch.no_grad():
            for index in group:
                layers[index][1].reset_parameters()
        yield layers[group[-1]][0], copy.deepcopy(clone)


@torch.no_grad()
def randomization_check(
    attributor: nn.Module,
    images: torch.Tensor,
    steps: int = 4,
    seed: int = 0,
    draws: int = 10,
    region: torch.Tensor | None = None,
) -> dict:
    """Spearman ρ and SSIM between the trained maps of ``images`` and those of both randomizations.

    Args:
        attributor: the trained attribution network.
        images: ``(B, C, H, W)`` images it explains.
        steps: groups of the cascading classifier randomization.
        seed: seed of the classifier randomization and of the first re-initialization draw.
        draws: re-initializations of the attributor (seeds ``seed``, ``seed + 1``, …), averaged.
        region: optional ``(B, 1, H, W)`` masks (e.g. the organ): every comparison then also gives
            ``spearman_region``, ρ over the pixels inside the region only.

    Returns:
        ``{"attributor": {"spearman", "spearman_abs", "ssim", "spearman_draws", "spearman_between_draws"},
        "cascading": [{"layer", "spearman", "spearman_abs", "ssim"}, …], "classifier": {"spearman", "spearman_abs",
        "ssim"}}`` where ``attributor`` holds the means over the
        draws (and ρ per draw) and ``classifier`` the fully randomized classifier (last step), each with
        ``spearman_region`` when a ``region`` is given. Lower is better. ``spearman_between_draws`` (only for
        ``draws`` > 1) is the mean ρ between consecutive re-initializations: the level that untrained attributors
        reach with each other, against which the trained maps' ρ can be read.

    Example:
        >>> from cfattr_monai.networks.attribution import AttentionGatedUNet
        >>> from cfattr_monai.networks.mobilenet import MobileNetV1
        >>> net = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
        >>> result = randomization_check(net, torch.rand(2, 1, 64, 64), draws=2)
        >>> sorted(result)
        ['attributor', 'cascading', 'classifier']
    """
    trained = attributor.eval()(images)

    def compare(maps: torch.Tensor) -> dict[str, float]:
        rho = _spearman_per_image(trained, maps)  # once, for the signed and the absolute mean
        result = {"spearman": float(rho.mean()), "ssim": ssim_similarity(trained, maps),
                  "spearman_abs": float(np.abs(rho).mean())}
        if region is not None:
            result["spearman_region"] = spearman_similarity(trained, maps, region)
        return result

    if draws < 1:
        raise ValueError(f"randomization_check: draws must be >= 1, got {draws}.")
    draw_maps = [reinitialized_attributor(attributor, seed + i).eval()(images) for i in range(draws)]
    per_draw = [compare(maps) for maps in draw_maps]
    result = {"attributor": {key: float(np.mean([d[key] for d in per_draw])) for key in per_draw[0]}}
    result["attributor"]["spearman_draws"] = [d["spearman"] for d in per_draw]
    if draws > 1:  # the reference level: how much two untrained attributors agree with each other
        result["attributor"]["spearman_between_draws"] = float(
            np.mean([spearman_similarity(a, b) for a, b in zip(draw_maps, draw_maps[1:])])
        )
    result["cascading"] = [
        {"layer": layer, **compare(randomized.eval()(images))}
        for layer, randomized in cascading_randomized_attributors(attributor, steps, seed)
    ]
    result["classifier"] = {k: v for k, v in result["cascading"][-1].items() if k != "layer"}
    return result
