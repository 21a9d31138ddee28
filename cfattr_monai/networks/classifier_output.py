"""Read a binary classifier's output as the pathology class c.

Every classifier in this project answers "healthy (0) vs pathological (1)". Two output layouts are accepted:

* one logit per image, shape ``(B, 1)`` or ``(B,)``: ``p(c|I) = σ(z)`` (MONAI ``DenseNet121(out_channels=1)``);
* two logits per image, shape ``(B, 2)``: ``p(c|I) = softmax(z)_1``.

In both cases the log-odds of the pathology, ``log(p / (1 − p))``, is a plain difference of logits, so it never
passes through a ``log`` of a probability and stays finite for any finite output.
"""

from __future__ import annotations

import torch

__all__ = ["pathology_logit", "pathology_probability"]


def pathology_logit(output: torch.Tensor) -> torch.Tensor:
    """Log-odds of the pathology class, ``log odds(I) = log p(c|I) − log(1 − p(c|I))``, shape ``(B,)``.

    Args:
        output: classifier output of shape ``(B,)``, ``(B, 1)`` or ``(B, 2)``.

    Raises:
        ValueError: any other shape.

    Example:
        >>> pathology_logit(torch.tensor([[0.0], [2.0]]))
        tensor([0., 2.])
    """
    if output.ndim == 1:
        return output
    if output.ndim == 2 and output.shape[1] == 1:
        return output[:, 0]
    if output.ndim == 2 and output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    raise ValueError(
        f"expected a binary classifier output of shape (B,), (B, 1) or (B, 2), got {tuple(output.shape)}; "
        "build the classifier with out_channels=1 (sigmoid) or 2 (softmax)."
    )


def pathology_probability(output: torch.Tensor) -> torch.Tensor:
    """``p(c|I)`` from a binary classifier output, shape ``(B,)``.

    Example:
        >>> pathology_probability(torch.tensor([[0.0, 0.0]]))
        tensor([0.5000])
    """
    return torch.sigmoid(pathology_logit(output))
