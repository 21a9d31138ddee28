"""ROC curve and ROC-AUC with a DeLong confidence interval, for the classifier's test set (paper Fig. 1c).

Reference:
    E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or more correlated receiver
    operating characteristic curves: a nonparametric approach", Biometrics 44(3):837–845 (1988).

Higher AUC is better (1 = every pathological image scored above every healthy one, 0.5 = chance).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["classifier_scores", "delong_auc", "operating_threshold", "roc_curve", "youden_threshold"]


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores and {0, 1} labels of equal length, with both classes present."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same number of items, got {s.size} and {y.size}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (healthy) or 1 (pathological), got values {sorted(set(y.tolist()))}.")
    if y.min() == y.max():
        raise ValueError(f"ROC needs both classes, got only label {int(y[0]) if y.size else 'none'} "
                         f"in {y.size} items; evaluate on a split that holds healthy and pathological images.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values; check the classifier output.")
    return s, y.astype(np.int64)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Args:
        scores: pathology scores p(c|I) (or logits), one per image.
        labels: 0 (healthy) or 1 (pathological), one per image.

    Returns:
        ``(fpr, tpr, thresholds)``; point ``k`` classifies ``score >= thresholds[k]`` as pathological
        (``thresholds[0] = +inf`` gives the origin).

    Example:
        >>> fpr, tpr, _ = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s, y = _scores_and_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_each_threshold = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_each_threshold]
    fps = (last_of_each_threshold + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last_of_each_threshold]]


def delong_auc(scores, labels, confidence: float = 0.95) -> tuple[float, float, float]:
    """ROC-AUC with DeLong's asymptotic confidence interval.

    With positives X_i (i = 1…m), negatives Y_j (j = 1…n) and ψ(X, Y) = 1 if X > Y, ½ if X = Y, 0 otherwise:
    AUC = (1/mn) Σ_i Σ_j ψ(X_i, Y_j); V10_i = (1/n) Σ_j ψ(X_i, Y_j), V01_j = (1/m) Σ_i ψ(X_i, Y_j);
    Var(AUC) = S10/m + S01/n with S10, S01 the sample variances of V10 and V01; the interval is
    AUC ± z_{(1+confidence)/2} · √Var, clipped to [0, 1].

    Args:
        scores: pathology scores, one per image.
        labels: 0 (healthy) or 1 (pathological), one per image; both classes must occur.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``(auc, low, high)``.

    Example:
        >>> auc, low, high = delong_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> auc
        0.75
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    s, y = _scores_and_labels(scores, labels)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    ranks = rankdata(np.r_[pos, neg])  # midranks: ties count ½
    v10 = (ranks[:m] - rankdata(pos)) / n  # negatives below each positive
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m  # positives above each negative
    auc = float(v10.mean())
    variance = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half_width = float(norm.ppf(0.5 + confidence / 2.0) * np.sqrt(variance))
    return auc, max(0.0, auc - half_width), min(1.0, auc + half_width)


def youden_threshold(scores, labels) -> float:
    """The operating threshold θ of a classifier: the ROC point maximizing Youden's ``J = TPR − FPR``.

    W. J. Youden, "Index for rating diagnostic tests", Cancer 3(1):32–35 (1950). An image is flagged when
    ``score >= θ``.

    Example:
        >>> youden_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.8
    """
    fpr, tpr, thresholds = roc_curve(scores, labels)
    # the first point (θ = +inf, nothing flagged) is no threshold a classifier can be run at: skip it
    return float(thresholds[1 + int(np.argmax(tpr[1:] - fpr[1:]))])


def classifier_scores(classifier, dataset, device="cpu", batch_size: int = 16):
    """p(c|I) of ``classifier`` for every item of ``dataset`` (dicts whose ``"image"`` is the preprocessed tensor)."""
    import torch

    from cfattr_monai.networks.classifier_output import pathology_probability

    scores = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
            scores.append(pathology_probability(classifier(batch.to(device))).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def operating_threshold(classifier, dataset, labels, device="cpu", batch_size: int = 16) -> float:
    """Youden threshold θ of ``classifier``'s p(c|I) over ``dataset`` (items with an ``"image"`` tensor).

    The paper's θ is "the classification threshold" of the classifier being explained; a classifier trained
    briefly can be far from calibrated (healthy images at p ≈ 0.9), so 0.5 is no operating point for it. Use a
    split the classifier was not trained on (validation).

    Args:
        classifier: binary classifier (see :mod:`cfattr_monai.networks.classifier_output`).
        dataset: a MONAI/torch dataset of dicts whose ``"image"`` is the preprocessed image tensor.
        labels: the class label (0 healthy, 1 pathological) of each dataset item, in order.
        device: where to run the classifier.
        batch_size: images per forward pass.
    """
    scores = classifier_scores(classifier, dataset, device, batch_size)
    # keep θ inside (0, 1) even for a saturated classifier, so that log-odds at θ stay finite
    return float(np.clip(youden_threshold(scores.numpy(), labels), 1e-6, 1 - 1e-6))
