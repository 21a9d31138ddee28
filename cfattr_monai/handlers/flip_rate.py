"""Validation criterion of the attributor: how often the map meets the paper's definition of M̂.

For the images the classifier flags (p(c|I) ≥ θ), the fraction whose binary map M̂ both flips the decision,
p(c|π(M̂)) ≤ θ, and respects the area limit, d(M̂) ≤ δ (Lenis et al. 2020, §2: M̂ ∈ {p(c|π(M)) ≤ θ, d(M) ≤ δ}).
Higher is better; images the classifier does not flag do not count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["CounterfactualFlipRate"]


def _explainer_output(output: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = output["pred"]
    return pred["mask"], pred["p"], pred["p_counterfactual"]


class CounterfactualFlipRate(Metric):
    """Fraction of flagged images with ``p(c|π(M̂)) ≤ θ`` and ``d(M̂) ≤ δ`` (higher is better).

    ``output_transform`` must give ``(mask, p, p_counterfactual)`` from the explainer's output dict; the default
    reads the ``pred`` of a ``SupervisedEvaluator`` whose network is a
    :class:`~cfattr_monai.explain.counterfactual.CounterfactualExplainer` (``decollate=False``).

    Args:
        delta: δ, the area limit as a fraction of the image.
        threshold: θ, the classification threshold.
        output_transform: engine output → ``(mask, p, p_counterfactual)``.

    Example:
        >>> metric = CounterfactualFlipRate(delta=0.1)
        >>> mask = torch.zeros(2, 1, 8, 8); mask[0, :, :2, :2] = 1
        >>> metric.update((mask, torch.tensor([0.9, 0.8]), torch.tensor([0.2, 0.7])))
        >>> metric.compute()
        0.5
    """

    def __init__(self, delta: float, threshold: float = 0.5, output_transform: Callable = _explainer_output) -> None:
        if not 0.0 < delta <= 1.0 or not 0.0 < threshold < 1.0:
            raise ValueError(
                f"CounterfactualFlipRate: need 0 < delta <= 1 and 0 < threshold < 1, got {delta} and {threshold}."
            )
        self.delta, self.threshold = delta, threshold
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self._flagged = 0
        self._explained = 0

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        mask, p, p_counterfactual = (t.detach() for t in output)
        flagged = p >= self.threshold
        small = mask.flatten(1).mean(dim=1) <= self.delta
        flipped = p_counterfactual <= self.threshold
        self._flagged += int(flagged.sum())
        self._explained += int((flagged & small & flipped).sum())

    @sync_all_reduce("_flagged", "_explained")
    def compute(self) -> float:
        return self._explained / self._flagged if self._flagged else 0.0
